"""Every existing key goes into a default project; then a key must have a project.

Separate from 0004 so that PostgreSQL does not alter the key table while the rows the
data step updated still have pending foreign-key checks in the same transaction.
"""

import django.db.models.deletion
from django.db import migrations, models

import accounts.models


def keys_into_default_project(apps, schema_editor) -> None:
    """Every existing key goes into one default project (made if there is none)."""
    Project = apps.get_model("accounts", "Project")
    ApiKey = apps.get_model("accounts", "ApiKey")
    project = Project.objects.filter(is_default=True).first()
    if project is None:
        project = Project.objects.create(
            name="Default project", is_default=True, public_id=accounts.models.new_project_id()
        )
    ApiKey.objects.filter(project__isnull=True).update(project=project)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_projects_prices_admin_keys")]

    operations = [
        migrations.RunPython(keys_into_default_project, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="apikey",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="keys",
                to="accounts.project",
            ),
        ),
    ]
