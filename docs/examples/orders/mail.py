from django.core.mail import send_mail


class Mailer:
    """A dependency: handlers that ask for ``mailer`` get one (MESSAGEBUS["DEPENDENCIES"])."""

    def send_confirmation(self, orderid: str) -> None:
        send_mail(f"Order {orderid} placed", "Thank you.", None, ["orders@example.com"])
