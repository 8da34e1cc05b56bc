"""Plain SQL for the few statements on the metering hot path.

The ORM builds each query anew on every call, and on this platform's request path
(authenticate, price, authorize, capture: ~10 statements per request pair) that compiling
costs more CPU than PostgreSQL spends answering. These helpers run fixed SQL through
Django's own connection (same transaction, same error types, same adapters) and turn rows
back into model instances with each field's own database converters, so callers still get
ordinary model objects. The SQL is portable (PostgreSQL and SQLite).
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from django.core.exceptions import FieldDoesNotExist
from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute

M = TypeVar("M", bound=models.Model)


@functools.cache
def vendor() -> str:
    """The default database's vendor (``connection.vendor``, which looks the connection up
    in a thread-local on every read; the engine is set once per process)."""
    return connections[DEFAULT_DB_ALIAS].vendor


def _run(sql: str, params: Sequence[Any], *, fetch: bool) -> Any:
    # ``connection`` is a proxy that looks the connection up in a thread-local on every
    # attribute access; resolve it once per statement.
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() if fetch else cursor.rowcount
    # On PostgreSQL: bind on the server and prepare once per connection, so neither side
    # parses or plans these statements again (Django's own cursors bind on the client).
    db.ensure_connection()
    db.validate_no_broken_transaction()
    with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchone() if fetch else cursor.rowcount


def run_on_postgresql(schema_editor: Any, *statements: str) -> None:
    """A migration step that exists only on PostgreSQL (functions, triggers; SQLite runs
    the Python twins). A plain cursor: the bodies contain "%" (RAISE formats), not query
    parameters."""
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def fetch_one(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    return _run(sql, params, fetch=True)


def execute(sql: str, params: Sequence[Any]) -> int:
    """Run one statement; returns the number of rows it touched."""
    return int(_run(sql, params, fetch=False))


@functools.cache
def _fields(model: type[models.Model]) -> tuple[models.Field, ...]:
    return tuple(model._meta.concrete_fields)


def columns(model: type[models.Model], alias: str) -> str:
    """Every concrete column of ``model``, in field order, qualified by ``alias``."""
    return ", ".join(f'{alias}."{field.column}"' for field in _fields(model))


def width(model: type[models.Model]) -> int:
    return len(_fields(model))


@functools.cache
def _converters(model: type[models.Model], vendor: str) -> tuple[tuple[int, Any, Any], ...]:
    """(position, column, converter) for the columns whose database values need
    converting, the backend's first and then the field's, as the ORM applies them (JSON
    decoding; decimals on SQLite); the same for every row of the model."""
    found = []
    for index, field in enumerate(_fields(model)):
        column = field.get_col(model._meta.db_table)
        for converter in [
            *connection.ops.get_db_converters(column),
            *field.get_db_converters(connection),
        ]:
            found.append((index, column, converter))
    return tuple(found)


@functools.cache
def _attnames(model: type[models.Model]) -> list[str]:
    return [field.attname for field in _fields(model)]


@functools.cache
def _builds_plainly(model: type[models.Model]) -> bool:
    """Whether an instance of ``model`` read from a row is no more than its column values
    in its ``__dict__``: the model keeps Django's constructor and ``from_db``, and each
    column's class attribute is one of Django's plain descriptors, which store the value
    as it is (a foreign key's also forgets a cached object, which a new instance lacks)."""
    if any(
        inspect.getattr_static(model, name) is not inspect.getattr_static(models.Model, name)
        for name in ("__init__", "from_db")
    ):
        return False
    return all(
        type(inspect.getattr_static(model, field.attname)) in _PLAIN_DESCRIPTORS
        for field in _fields(model)
    )


_PLAIN_DESCRIPTORS = (DeferredAttribute, ForeignKeyDeferredAttribute)


def from_row(model: type[M], row: Sequence[Any], start: int = 0) -> M:
    """The instance whose columns (as selected by ``columns``) start at ``row[start]``.

    What ``Model.from_db`` returns, built directly where that is the same thing (see
    ``_builds_plainly``; no ``pre_init``/``post_init`` receivers): Django's constructor
    walks every field with its signals, which on the metering path costs more than
    reading the row."""
    values = list(row[start : start + len(_fields(model))])
    converters = _converters(model, vendor())
    if converters:
        db = connections[DEFAULT_DB_ALIAS]
        for index, column, converter in converters:
            values[index] = converter(values[index], column, db)
    if not _builds_directly(model):
        return model.from_db(DEFAULT_DB_ALIAS, _attnames(model), values)
    instance = model.__new__(model)
    state = ModelState()
    state.adding = False
    state.db = DEFAULT_DB_ALIAS
    instance.__dict__["_state"] = state
    instance.__dict__.update(zip(_attnames(model), values, strict=True))
    return instance


def _builds_directly(model: type[models.Model]) -> bool:
    """``_builds_plainly``, and no ``pre_init``/``post_init`` receivers (checked on every
    build: a receiver may be connected at any time)."""
    return _builds_plainly(model) and not (
        signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model)
    )


@functools.cache
def _keyword_fields(model: type[models.Model]) -> tuple[tuple[str, str, bool, Any], ...]:
    """(name, attname, is a relation, field) for each field Django's constructor sets from
    keywords or defaults, in its order."""
    return tuple(
        (field.name, field.attname, field.is_relation, field)
        for field in model._meta.fields
        if field.column is not None and not field.generated
    )


def new(model: type[M], /, **values: Any) -> M:
    """``model(**values)``, an instance not yet saved, built directly where that is the
    same (see ``_builds_plainly``; no init receivers): each field from its attname, or its
    name (a related object, assigned through its descriptor as Django does), or its
    default. Django's keyword constructor costs several times more per field, and the
    metering path builds a hold, an authorization and a usage record per request."""
    if not _builds_directly(model):
        return model(**values)
    instance = model.__new__(model)
    attrs = instance.__dict__
    attrs["_state"] = ModelState()
    related = []
    for name, attname, is_relation, field in _keyword_fields(model):
        if is_relation and name in values:
            related.append((name, values.pop(name)))
        elif attname in values:
            attrs[attname] = values.pop(attname)
        else:
            attrs[attname] = field.get_default()
    for name, value in related:
        setattr(instance, name, value)
    for name, value in values.items():  # properties and fields given twice, as Django allows
        if name not in model._meta._property_names:  # type: ignore[attr-defined]
            try:
                model._meta.get_field(name)
            except FieldDoesNotExist:
                raise TypeError(
                    f"{model.__name__}() got an unexpected keyword argument {name!r}"
                ) from None
        setattr(instance, name, value)
    return instance


@functools.cache
def _insert_sql(model: type[models.Model], names: tuple[str, ...]) -> str:
    meta = model._meta
    by_name = {field.attname: field for field in _fields(model)}
    cols = ", ".join(f'"{by_name[name].column}"' for name in names)
    marks = ", ".join(["%s"] * len(names))
    # Table and column names come from the model's metadata, never from input.
    return f'INSERT INTO "{meta.db_table}" ({cols}) VALUES ({marks}) RETURNING "id"'  # noqa: S608


_SCALARS = (bool, int, str, Decimal, dt.datetime, dt.date)


def insert(model: type[models.Model], values: dict[str, Any]) -> int:
    """Insert one row from ``{field attname: value}`` and return its id. Values are
    prepared by their fields (JSON, decimals, dates), as the ORM would; database defaults
    and constraints apply as usual."""
    names = tuple(values)
    by_name = {field.attname: field for field in _fields(model)}
    # Scalars go to the driver as they are; the rest (JSON, ...) is prepared by its field.
    params = [
        value
        if value is None or isinstance(value, _SCALARS)
        else by_name[name].get_db_prep_save(value, connection)
        for name, value in values.items()
    ]
    row = fetch_one(_insert_sql(model, names), params)
    assert row is not None
    return int(row[0])


def create(model_class: type[M], /, **fields: Any) -> M:
    """``model.objects.create(**fields)`` for hot paths: the instance is built (defaults
    applied, relations resolved) and inserted with one plain statement. No ``save()``
    hooks or signals run; the models this is used for have none."""
    return save_new(new(model_class, **fields))


def _values(instance: models.Model) -> dict[str, Any]:
    return {
        field.attname: getattr(instance, field.attname)
        for field in _fields(type(instance))
        if not field.primary_key
    }


def save_new(instance: M) -> M:
    """Insert a new, unsaved instance with one plain statement (as ``create``)."""
    return stored(instance, insert(type(instance), _values(instance)))


def stored(instance: M, pk: int) -> M:
    """``instance`` marked as the row ``pk`` of the database (what ``save`` leaves), for a
    row inserted by a plain statement or a PostgreSQL function."""
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = DEFAULT_DB_ALIAS  # ``connection``'s alias
    return instance


def storable_text(text: str) -> str:
    """``text`` as a PostgreSQL text column can hold it: U+0000, which it cannot, becomes
    U+FFFD (the replacement character). For text that comes from outside (a prompt, an
    upstream's answer or error) and is kept for the record."""
    return text.replace("\x00", "\ufffd")


def _json_value(value: Any) -> Any:
    if isinstance(value, (Decimal, dt.datetime, dt.date)):
        return str(value)  # PostgreSQL reads these from their text form
    raise TypeError(f"{type(value).__name__} is not a column value")


def json_row(instance: models.Model) -> str:
    """Every column of a new instance but its id, as one JSON object keyed by column, for a
    PostgreSQL function that inserts it with ``jsonb_populate_record`` (JSON fields go in
    as the JSON they hold)."""
    by_name = {field.attname: field.column for field in _fields(type(instance))}
    return json.dumps(
        {by_name[name]: value for name, value in _values(instance).items()},
        default=_json_value,
    )
