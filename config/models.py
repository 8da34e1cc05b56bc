"""Model helpers shared by the apps."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models


class AppendOnly(models.Model):
    """Rows are written once: saving an existing row or deleting one raises. The database
    enforces the same with a trigger where it matters (ledger entries, audit records); this
    stops the ORM from trying. ``append_only_name`` names the rows in the error."""

    append_only_name: ClassVar[str] = "These rows"

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise RuntimeError(f"{self.append_only_name} are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise RuntimeError(f"{self.append_only_name} are append-only.")
