# conftest.py, beside manage.py: the bus's fixtures for every test
pytest_plugins = ["messagebus.pytest_plugin"]
