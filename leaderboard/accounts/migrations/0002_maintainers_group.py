"""Create the `maintainers` group with the moderation permissions."""

from django.db import migrations

PERMISSIONS = [
    ("moderate", "Can confirm, dismiss and lift flags and see the moderation queue"),
    ("requeue_any_run", "Can re-queue any failed evaluation run"),
]


def create_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")
    # post_migrate creates permissions only after all migrations ran; create them here so the
    # group is complete on the first migrate.
    content_type, _ = ContentType.objects.get_or_create(app_label="accounts", model="role")
    group, _ = Group.objects.get_or_create(name="maintainers")
    for codename, name in PERMISSIONS:
        permission, _ = Permission.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )
        group.permissions.add(permission)


def remove_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="maintainers").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
