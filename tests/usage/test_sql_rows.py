"""``config.sql.from_row`` builds the instance ``Model.from_db`` would (directly, for
models whose attributes are plain), and leaves it to Django when that could differ."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import models
from django.db.models.signals import post_init, pre_init

from accounts.models import ApiToken, User
from accounts.services import api_token_create
from config import sql
from usage.models import ModelPrice


def _row(model: type[models.Model], pk: int) -> tuple[Any, ...]:
    table = model._meta.db_table
    row = sql.fetch_one(f'SELECT {sql.columns(model, "r")} FROM "{table}" r WHERE r.id = %s', [pk])
    assert row is not None
    return row


def _orm(model: type[models.Model], pk: int) -> models.Model:
    return model.objects.get(pk=pk)


def _same(built: models.Model, loaded: models.Model) -> None:
    assert type(built) is type(loaded)
    assert {k: v for k, v in vars(built).items() if k != "_state"} == {
        k: v for k, v in vars(loaded).items() if k != "_state"
    }
    assert (built._state.adding, built._state.db) == (False, loaded._state.db)
    assert built._state.fields_cache == {}


@pytest.mark.django_db
def test_rows_build_the_instances_the_orm_loads(user: User, prices: Any) -> None:
    token, _ = api_token_create(user=user, name="rows", scopes=["metering"])
    for model, pk in ((ApiToken, token.pk), (User, user.pk), (ModelPrice, prices["chat"].pk)):
        assert sql._builds_plainly(model)
        built = sql.from_row(model, _row(model, pk))
        _same(built, _orm(model, pk))
        # an ordinary instance: relations load, saving updates the row
        if model is ApiToken:
            assert built.user == user  # type: ignore[attr-defined]
            built.name = "renamed"  # type: ignore[attr-defined]
            built.save(update_fields=["name"])
            assert ApiToken.objects.get(pk=pk).name == "renamed"


@pytest.mark.django_db
def test_a_model_with_init_receivers_is_built_by_django(user: User) -> None:
    seen: list[str] = []

    def before(sender: Any, **kwargs: Any) -> None:
        seen.append("pre")

    def after(sender: Any, instance: Any, **kwargs: Any) -> None:
        seen.append("post")

    for signal, receiver in ((pre_init, before), (post_init, after)):
        signal.connect(receiver, sender=User)
        try:
            seen.clear()
            _same(sql.from_row(User, _row(User, user.pk)), _orm(User, user.pk))
            assert seen and set(seen) == {"pre" if signal is pre_init else "post"}
        finally:
            signal.disconnect(receiver, sender=User)
    seen.clear()
    sql.from_row(User, _row(User, user.pk))
    assert seen == []  # built directly again


@pytest.fixture
def fresh_verdicts():  # type: ignore[no-untyped-def]
    sql._builds_plainly.cache_clear()
    yield
    sql._builds_plainly.cache_clear()


def test_a_model_with_its_own_constructor_is_built_by_django(
    fresh_verdicts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sql._builds_plainly(ModelPrice)
    sql._builds_plainly.cache_clear()
    django_init = ModelPrice.__init__

    def own_init(self: Any, *args: Any, **kwargs: Any) -> None:
        django_init(self, *args, **kwargs)

    monkeypatch.setattr(ModelPrice, "__init__", own_init)
    assert not sql._builds_plainly(ModelPrice)


def test_a_model_with_a_descriptor_of_its_own_is_built_by_django(
    fresh_verdicts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Shouting:
        def __get__(self, instance: Any, owner: Any) -> Any:
            return self if instance is None else instance.__dict__["display_name"].upper()

        def __set__(self, instance: Any, value: Any) -> None:
            instance.__dict__["display_name"] = value

    monkeypatch.setattr(ModelPrice, "display_name", Shouting())
    assert not sql._builds_plainly(ModelPrice)


def _same_new(built: models.Model, constructed: models.Model) -> None:
    assert type(built) is type(constructed)
    assert {k: v for k, v in vars(built).items() if k != "_state"} == {
        k: v for k, v in vars(constructed).items() if k != "_state"
    }
    assert built._state.adding
    assert built._state.db == constructed._state.db  # set by a related object, if one is given
    assert built._state.fields_cache.keys() == constructed._state.fields_cache.keys()
    for name, value in built._state.fields_cache.items():
        assert value is constructed._state.fields_cache[name]


@pytest.mark.django_db
def test_new_builds_the_instances_the_constructor_builds(user: User, prices: Any) -> None:
    import datetime as dt

    from django.utils import timezone

    from usage.models import Authorization, UsageRecord
    from wallet.models import Hold

    now = timezone.now()
    hold_fields = {
        "wallet_id": user.wallet.pk, "request_id": "r-1", "amount": 5, "expires_at": now,
        "created_at": now, "reference_type": "test", "reference_id": "1",
    }  # fmt: skip
    for fields in (hold_fields, {**hold_fields, "wallet": user.wallet}):
        _same_new(sql.new(Hold, **fields), Hold(**fields))
    defaulted = sql.new(Hold, amount=7)  # the rest: defaults, made at construction
    assert now <= defaulted.created_at <= timezone.now()
    _same_new(defaulted, Hold(amount=7, created_at=defaulted.created_at))
    hold = Hold(pk=41, **hold_fields)
    token, _ = api_token_create(user=user, name="new", scopes=["metering"])
    opened = {
        "hold": hold, "token_id": token.pk, "wallet_id": user.wallet.pk, "user_id": user.pk,
        "price": prices["chat"], "model": "test-chat", "request_id": "r-1",
        "created_at": now, "expires_at": now + dt.timedelta(minutes=5),
    }  # fmt: skip
    authorization = sql.new(Authorization, **opened)
    _same_new(authorization, Authorization(**opened))
    assert authorization.hold is hold and authorization.hold_id == 41
    assert authorization.price_id == prices["chat"].pk
    record = {"authorization": authorization, "wallet_id": user.wallet.pk, "created_at": now,
              "metadata": {"region": "x"}, "input_tokens": 3}  # fmt: skip
    _same_new(sql.new(UsageRecord, **record), UsageRecord(**record))
    # defaults that are made per instance are made per instance
    assert sql.new(UsageRecord).metadata is not sql.new(UsageRecord).metadata


def test_new_refuses_what_the_constructor_refuses() -> None:
    from wallet.models import Hold

    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        sql.new(Hold, colour="red")
    with pytest.raises(TypeError):
        Hold(colour="red")
    with pytest.raises(ValueError):  # a related object of the wrong model
        sql.new(Hold, wallet=object())
