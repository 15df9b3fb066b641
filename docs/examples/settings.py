# At the end of mysite/settings.py
import django

INSTALLED_APPS += ["messagebus", "orders"]

MESSAGEBUS = {"DEPENDENCIES": {"mailer": "orders.mail.Mailer"}}

# Print emails instead of sending them, while you try it (Django 6.1 names it in MAILERS)
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
