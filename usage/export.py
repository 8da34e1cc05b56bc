"""The usage export: CSV (or JSON Lines) of a filtered set of usage records, streamed in
constant memory.

Content columns (``content_*``: system, messages, tools, tool calls, response, context
bytes) are added only when a record in the export has logged content; a record logged
without content leaves them empty. JSON Lines gives each record its ``content`` object
only when it has one.

On PostgreSQL the rows are formatted by the database and streamed with ``COPY ... TO
STDOUT``: the server sends rows as it reads them and they are passed on in chunks of
``USAGE_EXPORT_CHUNK_BYTES``, so memory does not grow with the number of rows. Elsewhere
(SQLite for local runs) a server-side iterator feeds Python's ``csv`` writer; both produce
the same CSV (checked by the tests).

Under ASGI, Django drains a *synchronous* iterator into a list before sending it (see
``StreamingHttpResponse.__aiter__``), so ASGI requests get ``achunks()``, an asynchronous
iterator that fetches each chunk through ``sync_to_async`` on the request's thread.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.models import (
    Case,
    CharField,
    DecimalField,
    ExpressionWrapper,
    F,
    Func,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce

from usage.models import UsageRecord
from wallet import money

_TIMESTAMP_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Timestamp(Func):
    function = "to_char"
    output_field = CharField()

    def __init__(self, field: str) -> None:
        super().__init__(F(field), Value(_TIMESTAMP_FORMAT))


class _SpreadsheetSafe(Func):
    """Text a spreadsheet would run as a formula gets a leading quote (CSV injection)."""

    # The expression appears once in the template, so its parameters are bound once.
    template = r"regexp_replace(%(expressions)s, '^([-=+@\t\r])', '''\1')"
    output_field = CharField()


def _credits_sql(field: str) -> Any:
    exact = Cast(F(field), DecimalField(max_digits=24, decimal_places=0))  # not int division
    return Cast(
        ExpressionWrapper(exact / Value(Decimal(money.MICRO_PER_CREDIT)), DecimalField()),
        DecimalField(max_digits=24, decimal_places=6),
    )


def _bool_sql(field: str) -> Any:
    return Case(
        When(**{field: True}, then=Value("true")),
        default=Value("false"),
        output_field=CharField(),
    )


def _timestamp_py(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _safe_py(value: str | None) -> str:
    text = value or ""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _decimal_py(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")


def _credits_py(value: int) -> str:
    return f"{money.micro_to_credits(value):.6f}"


def _jsonb_order(value: Any) -> Any:
    """Keys in PostgreSQL's jsonb order (shorter first, then bytewise), as its text has."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {k: _jsonb_order(value[k]) for k in keys}
    if isinstance(value, list):
        return [_jsonb_order(v) for v in value]
    return value


def _plain_py(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Column:
    header: str
    field: str  # model field (or relation path) read by the portable path
    sql: Any  # expression that formats it in PostgreSQL
    py: Callable[[Any], str]  # formats the field's value in Python the same way


def _plain(header: str, field: str | None = None) -> Column:
    field = field or header
    return Column(header, field, Cast(F(field), TextField()), _plain_py)


def _decimal(header: str) -> Column:
    return Column(header, header, Cast(F(header), TextField()), _decimal_py)


def _credits(header: str, field: str) -> Column:
    return Column(header, field, Cast(_credits_sql(field), TextField()), _credits_py)


def _text(header: str, field: str | None = None) -> Column:
    field = field or header
    return Column(header, field, _SpreadsheetSafe(Coalesce(F(field), Value(""))), _safe_py)


def _timestamp(header: str) -> Column:
    return Column(header, header, _Timestamp(header), _timestamp_py)


COLUMNS: list[Column] = [
    _plain("id"),
    _text("request_id"),
    _timestamp("created_at"),
    _timestamp("started_at"),
    _timestamp("finished_at"),
    _plain("latency_ms"),
    _text("model"),
    _text("endpoint"),
    _plain("status"),
    _text("error"),
    _plain("token_id"),
    _text("token_group", "token_group__name"),
    _plain("input_tokens"),
    _plain("cached_input_tokens"),
    _plain("output_tokens"),
    _plain("reasoning_tokens"),
    _decimal("task_units"),
    _plain("unit_name"),
    _plain("price_id"),
    _decimal("input_usd_per_mtok"),
    _decimal("cached_input_usd_per_mtok"),
    _decimal("output_usd_per_mtok"),
    _decimal("reasoning_usd_per_mtok"),
    _decimal("request_usd"),
    _decimal("unit_usd"),
    _decimal("markup"),
    _decimal("tier_rate"),
    _decimal("credits_per_usd"),
    _decimal("usd_cost"),
    _credits("cost", "cost_micro"),
    _credits("charged", "charged_micro"),
    _credits("shortfall", "shortfall_micro"),
    Column("estimated", "estimated", _bool_sql("estimated"), lambda v: "true" if v else "false"),
    Column(
        "metadata",
        "metadata",
        Cast(F("metadata"), TextField()),
        lambda v: json.dumps(_jsonb_order(v), separators=(", ", ": "), ensure_ascii=False),
    ),
]
HEADERS = [c.header for c in COLUMNS]
CONTENT_COLUMNS: list[Column] = [
    _text("content_system", "content__system"),
    _text("content_messages", "content__messages"),
    _text("content_tools", "content__tools"),
    _text("content_tool_calls", "content__tool_calls"),
    _text("content_response", "content__response"),
    _plain("content_context_bytes", "content__context_bytes"),
]


def use_copy() -> bool:
    return connection.vendor == "postgresql" and settings.USAGE_EXPORT_COPY


class UsageExport:
    """CSV of ``records`` (a filtered ``UsageRecord`` queryset), oldest first.

    Iterate ``chunks()`` (WSGI) or ``achunks()`` (ASGI) once; each yields ``bytes`` of
    about ``chunk_bytes``.
    """

    def __init__(
        self,
        records: QuerySet[UsageRecord],
        *,
        chunk_bytes: int | None = None,
        include_content: bool | None = None,
    ):
        self.records = records.order_by("id")
        self.chunk_bytes = chunk_bytes or settings.USAGE_EXPORT_CHUNK_BYTES
        if include_content is None:
            include_content = self.records.filter(content__isnull=False).exists()
        self.columns = COLUMNS + CONTENT_COLUMNS if include_content else COLUMNS

    # -- PostgreSQL: COPY ------------------------------------------------------------

    def copy_sql(self) -> str:
        annotated = self.records.annotate(
            **{f"csv_{i}": column.sql for i, column in enumerate(self.columns)}
        ).values_list(*(f"csv_{i}" for i in range(len(self.columns))))
        sql, params = annotated.query.sql_with_params()
        operations: Any = connection.ops  # PostgreSQL's, which can bind literals
        select = operations.compose_sql(sql, params)
        return f"COPY ({select}) TO STDOUT WITH (FORMAT csv)"

    def _header(self) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([c.header for c in self.columns])
        return buffer.getvalue().encode()

    def _copy_chunks(self) -> Generator[bytes, None, None]:
        sql = self.copy_sql()
        connection.ensure_connection()
        buffer = bytearray(self._header())
        with connection.connection.cursor() as cursor, cursor.copy(sql) as copy:
            for row in copy:
                buffer += row
                if len(buffer) >= self.chunk_bytes:
                    yield bytes(buffer)
                    buffer.clear()
        if buffer:
            yield bytes(buffer)

    # -- Anywhere: Python's csv writer -----------------------------------------------

    def _python_chunks(self) -> Generator[bytes, None, None]:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow([c.header for c in self.columns])
        fields = [c.field for c in self.columns]
        formats = [c.py for c in self.columns]
        for values in self.records.values_list(*fields).iterator(chunk_size=2000):
            writer.writerow([fmt(value) for fmt, value in zip(formats, values, strict=True)])
            if text.tell() >= self.chunk_bytes:
                yield text.getvalue().encode()
                text.seek(0)
                text.truncate()
        if text.tell():
            yield text.getvalue().encode()

    def chunks(self) -> Generator[bytes, None, None]:
        return self._copy_chunks() if use_copy() else self._python_chunks()

    async def achunks(self) -> AsyncIterator[bytes]:
        """The same chunks for an ASGI response. Every step runs on the request's thread
        (``thread_sensitive``), where its database connection lives."""
        source = await sync_to_async(self.chunks)()
        step = sync_to_async(_next_chunk)
        try:
            while (chunk := await step(source)) is not None:
                yield chunk
        finally:
            await sync_to_async(source.close)()


class UsageJsonLinesExport(UsageExport):
    """JSON Lines: one object per record (``render(record)``: the API's record shape, with
    ``content`` only on records that have logged content), oldest first. Records come
    with their group and content in the same query."""

    def __init__(
        self,
        records: QuerySet[UsageRecord],
        *,
        render: Callable[[UsageRecord], dict[str, Any]],
        chunk_bytes: int | None = None,
    ):
        super().__init__(records, chunk_bytes=chunk_bytes, include_content=False)
        self.render = render

    def chunks(self) -> Generator[bytes, None, None]:
        buffer = io.StringIO()
        records = self.records.select_related("token_group", "content")
        for record in records.iterator(chunk_size=2000):
            line = self.render(record)
            buffer.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
            buffer.write("\n")
            if buffer.tell() >= self.chunk_bytes:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue().encode()


def _next_chunk(source: Generator[bytes, None, None]) -> bytes | None:
    return next(source, None)
