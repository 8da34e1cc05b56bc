"""Audit for the admin: every save, deletion and action of a staff member leaves an
``AuditRecord``. ``audit.apps`` applies ``AuditedAdminMixin`` to every registered admin of
the business apps, so a new admin class is audited without remembering to."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from audit.services import audit_record_create, snapshot
from config.errors import ApplicationError

# Records kept per object of an action run on a large selection.
_MAX_ACTION_RECORDS = 500


def _fresh(obj: Model) -> Model | None:
    return type(obj)._default_manager.filter(pk=obj.pk).first()


def audited(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an admin action that writes its own audit records (through a staff service)."""
    func.audited = True  # type: ignore[attr-defined]
    return func


class AuditedAdminMixin:
    """Adds, changes, deletions and actions are audited with before/after snapshots. Saves
    and deletions are recorded in their transaction; actions (which may call a payment
    provider, outside any transaction) are recorded right after they run."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = snapshot(_fresh(obj)) if change and obj.pk is not None else {}
        with transaction.atomic():
            super().save_model(request, obj, form, change)  # type: ignore[misc]
            audit_record_create(
                actor=request.user,
                action="admin.change" if change else "admin.add",
                target=obj,
                before=before,
                after=snapshot(_fresh(obj)),
            )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            audit_record_create(
                actor=request.user, action="admin.delete", target=obj, before=snapshot(obj)
            )
            super().delete_model(request, obj)  # type: ignore[misc]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                audit_record_create(
                    actor=request.user, action="admin.delete", target=obj, before=snapshot(obj)
                )
            super().delete_queryset(request, queryset)  # type: ignore[misc]

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        with transaction.atomic():
            befores = {obj.pk: snapshot(_fresh(obj)) for obj in formset.get_queryset() if obj.pk}
            # Deleted instances lose their primary key when deleted: note them first.
            deleting = [
                (f"{f.instance._meta.app_label}.{f.instance._meta.model_name}", f.instance.pk)
                for f in formset.deleted_forms
                if f.instance.pk is not None
            ]
            super().save_formset(request, form, formset, change)  # type: ignore[misc]
            for obj in [*formset.new_objects, *(o for o, _ in formset.changed_objects)]:
                audit_record_create(
                    actor=request.user,
                    action="admin.change" if obj.pk in befores else "admin.add",
                    target=obj,
                    before=befores.get(obj.pk, {}),
                    after=snapshot(_fresh(obj)),
                )
            for target_type, pk in deleting:
                audit_record_create(
                    actor=request.user,
                    action="admin.delete",
                    target_type=target_type,
                    target_id=str(pk),
                    before=befores.get(pk, {}),
                )

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)  # type: ignore[misc]
        return {
            name: (
                (func, action_name, description)
                if getattr(func, "audited", False) or name == "delete_selected"
                else (_audit_action(func, name), action_name, description)
            )
            for name, (func, action_name, description) in actions.items()
        }


def _audit_action(func: Callable[..., Any], name: str) -> Callable[..., Any]:
    def run(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        objects = list(queryset[:_MAX_ACTION_RECORDS])
        before = {obj.pk: snapshot(obj) for obj in objects}
        result = func(modeladmin, request, queryset)
        for obj in objects:
            audit_record_create(
                actor=request.user,
                action=f"admin.action.{name}"[:64],
                target=obj,
                before=before[obj.pk],
                after=snapshot(_fresh(obj)),
            )
        return result

    return run


# --- Actions that ask for input first -----------------------------------------------------


class StaffActionForm(forms.Form):
    """Every staff form carries a key made when the form is shown: submitting it twice
    (double click, browser retry) replays the first result."""

    idempotency_key = forms.CharField(widget=forms.HiddenInput)
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=2000)


def form_action(
    modeladmin: Any,
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    form_class: type[StaffActionForm],
    action: str,
    title: str,
    apply: Callable[[Any, dict[str, Any], str], str],
) -> TemplateResponse | None:
    """Show ``form_class`` for the selected objects; once submitted and valid, call
    ``apply(obj, cleaned_data, key)`` for each and report the outcome of each."""
    objects = list(queryset)
    if "apply" in request.POST:
        form = form_class(request.POST)
        if form.is_valid():
            key = form.cleaned_data["idempotency_key"]
            for obj in objects:
                try:
                    message = apply(obj, form.cleaned_data, f"{key}:{obj.pk}")
                except ApplicationError as exc:
                    modeladmin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
                else:
                    modeladmin.message_user(request, f"{obj}: {message}", messages.SUCCESS)
            return None
    else:
        form = form_class(initial={"idempotency_key": uuid.uuid4().hex})
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "objects": objects,
        "form": form,
        "action": action,
        "opts": modeladmin.model._meta,
    }
    return TemplateResponse(request, "admin/audit/action_form.html", context)


def staff_form_action(
    *,
    form_class: type[StaffActionForm],
    title: str,
    permissions: list[str],
    description: str = "",
) -> Callable[[Callable[..., str]], Callable[..., Any]]:
    """Turn ``apply(modeladmin, request, obj, cleaned_data, key) -> message`` into an admin
    action that first asks for ``form_class`` (see ``form_action``). ``apply`` calls a staff
    service, which writes the audit record."""

    def wrap(apply: Callable[..., str]) -> Callable[..., Any]:
        name = apply.__name__

        @admin.action(description=description or title, permissions=permissions)
        @audited
        @functools.wraps(apply)
        def action(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
            return form_action(
                modeladmin,
                request,
                queryset,
                form_class=form_class,
                action=name,
                title=title,
                apply=lambda obj, data, key: apply(modeladmin, request, obj, data, key),
            )

        return action

    return wrap
