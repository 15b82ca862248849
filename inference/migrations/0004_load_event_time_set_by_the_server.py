import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0003_load_reason_file_removed"),
    ]

    operations = [
        migrations.AlterField(
            model_name="loadevent",
            name="created_at",
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now, editable=False),
        ),
    ]
