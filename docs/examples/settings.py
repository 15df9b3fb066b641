# At the end of mysite/settings.py
INSTALLED_APPS += ["messagebus", "orders"]

MESSAGEBUS = {"DEPENDENCIES": {"mailer": "orders.mail.Mailer"}}

# Print emails instead of sending them, while you try it
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
