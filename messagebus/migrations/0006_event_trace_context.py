from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("messagebus", "0005_inbox")]

    operations = [
        migrations.AddField(
            model_name="storedevent",
            name="trace_context",
            field=models.JSONField(
                blank=True, help_text="The trace it was stored in (W3C traceparent).", null=True
            ),
        ),
    ]
