"""PostgreSQL objects of the usage app, installed by migrations (which import the text
they were written with, so a later version goes in a new constant)."""

# An authorization's fast path in one call, so a request that needs no cap row locked is
# authorized in one statement (one round trip, its own transaction): reserve the hold
# (``wallet_hold_create``), keep the wallet's minimum balance, and insert the
# authorization. Any outcome but ``ok`` has changed nothing, and the caller then takes the
# general path (``usage.services.authorization_create``), which explains the refusal.
# The authorization's columns are listed here: a test compares them with the model.
AUTHORIZATION_OPEN_V1 = r"""
CREATE FUNCTION usage_authorization_open(
    p_wallet bigint, p_amount bigint, p_hold_request text, p_expires timestamptz,
    p_ref_type text, p_ref_id text, p_now timestamptz, p_min_balance bigint,
    p_async_commit boolean,
    p_token bigint, p_user bigint, p_membership bigint, p_price bigint, p_group bigint,
    p_tier_rate numeric, p_request text, p_model text, p_endpoint text,
    p_input_tokens bigint, p_max_tokens bigint, p_task_units numeric, p_body_hash text,
    p_client_ip inet,
    OUT o_outcome text, OUT o_authorization bigint, OUT o_hold bigint,
    OUT o_available_after bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_async_commit THEN
        -- SET LOCAL: this transaction's commit does not wait for the disk.
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    SELECT h.o_outcome, h.o_hold, h.o_available_after
      INTO o_outcome, o_hold, o_available_after
      FROM wallet_hold_create(p_wallet, p_amount, p_hold_request, p_expires, p_ref_type,
                              p_ref_id, p_now) h;
    IF o_outcome <> 'ok' THEN
        o_hold := NULL;
        RETURN;
    END IF;
    -- No request starts below the wallet's minimum (what it had before this hold).
    IF o_available_after + p_amount < p_min_balance THEN
        UPDATE wallet_wallet SET held = held - p_amount WHERE id = p_wallet;
        DELETE FROM wallet_hold WHERE id = o_hold;
        o_outcome := 'below_minimum'; o_hold := NULL; o_available_after := NULL;
        RETURN;
    END IF;
    -- A duplicate request id raises unique_violation: the whole call is undone.
    INSERT INTO usage_authorization (
        token_id, user_id, wallet_id, membership_id, hold_id, price_id, token_group_id,
        tier_rate, request_id, model, endpoint, estimated_input_tokens, max_tokens,
        estimated_task_units, amount_micro, body_hash, client_ip, created_at, expires_at,
        settled_at)
    VALUES (
        p_token, p_user, p_wallet, p_membership, o_hold, p_price, p_group,
        p_tier_rate, p_request, p_model, p_endpoint, p_input_tokens, p_max_tokens,
        p_task_units, p_amount, p_body_hash, p_client_ip, p_now, p_expires, NULL)
    RETURNING id INTO o_authorization;
END $$;
"""

# V2 (migration ``usage.0009``): the same, but it first takes the key-share locks its
# insert needs on the token and the membership (the authorization references both), so
# it locks in the global order, token -> membership -> wallet, as a capture does. V1 took
# them with the insert, after the wallet: an authorization could then hold the wallet
# and wait on a capture holding the token and waiting for the wallet (a deadlock, seen
# with tokens sharing an organization's pool).
_OPEN_LOCKS = """LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts_apitoken WHERE id = p_token FOR KEY SHARE;
    IF p_membership IS NOT NULL THEN
        PERFORM 1 FROM accounts_membership WHERE id = p_membership FOR KEY SHARE;
    END IF;
"""
AUTHORIZATION_OPEN_V2 = AUTHORIZATION_OPEN_V1.replace(
    "\nCREATE FUNCTION ", "\nCREATE OR REPLACE FUNCTION ", 1
).replace("LANGUAGE plpgsql AS $$\nBEGIN\n", _OPEN_LOCKS, 1)
assert AUTHORIZATION_OPEN_V2.count("FOR KEY SHARE") == 2
assert "CREATE OR REPLACE FUNCTION usage_authorization_open(" in AUTHORIZATION_OPEN_V2
# Back from V2: V1's text, replacing.
AUTHORIZATION_OPEN_V1_REPLACE = AUTHORIZATION_OPEN_V1.replace(
    "\nCREATE FUNCTION ", "\nCREATE OR REPLACE FUNCTION ", 1
)

DROP_AUTHORIZATION_OPEN_V1 = r"""
DROP FUNCTION IF EXISTS usage_authorization_open(
    bigint, bigint, text, timestamptz, text, text, timestamptz, bigint, boolean, bigint,
    bigint, bigint, bigint, bigint, numeric, text, text, text, bigint, bigint, numeric, text,
    inet);
"""

# A capture's common case in one call, inside the caller's transaction (which has already
# counted the charge against the token and the member): settle the authorization (once),
# write its usage record (``p_record``: every column, as JSON) and capture the hold in
# full (``wallet_capture``). Two outcomes leave everything to the caller: ``settled`` (the
# authorization already was: nothing written), and the general-path error (SQLSTATE
# UC001: the hold is no longer active, or the wallet could not cover the whole cost),
# which undoes the call's writes; ``usage.services.authorization_capture`` then takes its
# general path, which explains or records those cases. The record's columns are listed
# here: a test compares them with the model.
CAPTURE_V1 = r"""
CREATE FUNCTION usage_capture(
    p_authorization bigint, p_hold bigint, p_cost bigint, p_key text, p_now timestamptz,
    p_record jsonb,
    OUT o_outcome text, OUT o_record bigint, OUT o_entry bigint,
    OUT o_balance_after bigint, OUT o_available_after bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_capture record;
BEGIN
    UPDATE usage_authorization SET settled_at = p_now
     WHERE id = p_authorization AND settled_at IS NULL;
    IF NOT FOUND THEN
        o_outcome := 'settled';
        RETURN;
    END IF;
    INSERT INTO usage_usagerecord (
        request_id, authorization_id, wallet_id, user_id, token_id, token_group_id,
        price_id, model, endpoint, status, error, started_at, finished_at, latency_ms,
        input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, task_units,
        unit_name, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok,
        reasoning_usd_per_mtok, request_usd, unit_usd, markup, tier_rate, credits_per_usd,
        usd_cost, cost_micro, charged_micro, shortfall_micro, estimated, metadata, client_ip,
        body_hash, created_at)
    SELECT
        r.request_id, r.authorization_id, r.wallet_id, r.user_id, r.token_id,
        r.token_group_id, r.price_id, r.model, r.endpoint, r.status, r.error, r.started_at,
        r.finished_at, r.latency_ms, r.input_tokens, r.output_tokens, r.cached_input_tokens,
        r.reasoning_tokens, r.task_units, r.unit_name, r.input_usd_per_mtok,
        r.output_usd_per_mtok, r.cached_input_usd_per_mtok, r.reasoning_usd_per_mtok,
        r.request_usd, r.unit_usd, r.markup, r.tier_rate, r.credits_per_usd, r.usd_cost,
        r.cost_micro, r.charged_micro, r.shortfall_micro, r.estimated, r.metadata,
        r.client_ip, r.body_hash, r.created_at
      FROM jsonb_populate_record(NULL::usage_usagerecord, p_record) r
    RETURNING id INTO o_record;
    SELECT * INTO v_capture
      FROM wallet_capture(p_hold, p_cost, 'usage', p_key, 'usage.usagerecord',
                          o_record::text, p_now);
    IF v_capture.o_outcome <> 'ok' OR v_capture.o_charged <> p_cost THEN
        RAISE EXCEPTION 'usage_capture: authorization % needs the general path',
              p_authorization USING ERRCODE = 'UC001';
    END IF;
    o_outcome := 'ok';
    o_entry := v_capture.o_entry;
    o_balance_after := v_capture.o_balance_after;
    o_available_after := v_capture.o_available_after;
END $$;
"""

DROP_CAPTURE_V1 = r"""
DROP FUNCTION IF EXISTS usage_capture(bigint, bigint, bigint, text, timestamptz, jsonb);
"""

# The whole common capture as one statement, in a transaction of its own (autocommit) or
# the caller's: count the charge against the token (``used_micro`` and its budget period,
# as ``accounts.services.api_token_spend_add``) and the member (``spend_month_micro``, as
# ``membership_spend_add``), in that lock order, then ``usage_capture``. ``p_day``,
# ``p_week`` and ``p_month`` are the first days of the charge's budget periods,
# ``p_member_month`` the first day of the request's month (the caller computes them:
# ``budget_period_bounds``, ``month_start``). The general-path error undoes the counts
# with the rest; on ``settled`` nothing was written at all.
CAPTURE_COUNTED_V1 = r"""
CREATE FUNCTION usage_capture_counted(
    p_token bigint, p_membership bigint, p_day date, p_week date, p_month date,
    p_member_month date,
    p_authorization bigint, p_hold bigint, p_cost bigint, p_key text, p_now timestamptz,
    p_record jsonb,
    OUT o_outcome text, OUT o_record bigint, OUT o_entry bigint,
    OUT o_balance_after bigint, OUT o_available_after bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_start date;
BEGIN
    SELECT CASE budget_period WHEN 'daily' THEN p_day WHEN 'weekly' THEN p_week
           ELSE p_month END
      INTO v_start FROM accounts_apitoken WHERE id = p_token FOR NO KEY UPDATE;
    UPDATE accounts_apitoken SET
        used_micro = used_micro + p_cost,
        budget_spent_micro = CASE
            WHEN budget_period = '' THEN 0
            WHEN budget_period_start IS NULL OR budget_period_start < v_start
                THEN GREATEST(p_cost, 0)
            ELSE budget_spent_micro + p_cost END,
        budget_period_start = CASE
            WHEN budget_period = '' THEN NULL
            WHEN budget_period_start IS NULL OR budget_period_start < v_start THEN v_start
            ELSE budget_period_start END
     WHERE id = p_token;
    IF p_membership IS NOT NULL THEN
        UPDATE accounts_membership SET
            spend_month_micro = CASE WHEN spend_month = p_member_month
                                     THEN spend_month_micro + p_cost
                                     ELSE GREATEST(p_cost, 0) END,
            spend_month = p_member_month
         WHERE id = p_membership;
    END IF;
    SELECT c.o_outcome, c.o_record, c.o_entry, c.o_balance_after, c.o_available_after
      INTO o_outcome, o_record, o_entry, o_balance_after, o_available_after
      FROM usage_capture(p_authorization, p_hold, p_cost, p_key, p_now, p_record) c;
    IF o_outcome <> 'ok' THEN
        -- Already settled: the counts above must not stand either.
        RAISE EXCEPTION 'usage_capture_counted: authorization % is settled', p_authorization
              USING ERRCODE = 'UC002';
    END IF;
END $$;
"""

DROP_CAPTURE_COUNTED_V1 = r"""
DROP FUNCTION IF EXISTS usage_capture_counted(
    bigint, bigint, date, date, date, date, bigint, bigint, bigint, text, timestamptz, jsonb);
"""

# V3 of ``usage_authorization_open`` and V2 of ``usage_capture_counted`` (migration
# ``usage.0010``) check what the metering fast path read from its process's memory
# (``config.cached_reads``) instead of the database: ``p_token_state``, the token's
# ``accounts_token_state`` as it was read (NULL: read from the database for this
# request), recomputed once the token's row is locked; and, for the authorization,
# ``p_price_current``: the price version was read from memory, so it must still be the
# model's current version at ``p_now``, and offered (versions are never edited: a change
# is a new version). If either differs they change nothing: the authorization answers
# ``stale``, the capture raises SQLSTATE UC003 (undoing its counts with it). The caller
# then answers the request again from the database.
_OPEN_STATE_CHECK = """\
    IF p_token_state IS NOT NULL
       AND accounts_token_state(p_token) IS DISTINCT FROM p_token_state THEN
        o_outcome := 'stale';
        RETURN;
    END IF;
    IF p_price_current AND NOT EXISTS (
        SELECT 1 FROM (SELECT id, active FROM usage_modelprice
                        WHERE model = p_model AND effective_from <= p_now
                        ORDER BY effective_from DESC LIMIT 1) current_version
         WHERE current_version.id = p_price AND current_version.active) THEN
        o_outcome := 'stale';
        RETURN;
    END IF;
"""
_LOCKED = "FOR KEY SHARE;\n    END IF;\n"  # the end of the key-share locks
_OPEN_V3_ARGUMENTS = (
    "    p_client_ip inet, p_token_state text DEFAULT NULL,\n"
    "    p_price_current boolean DEFAULT false,\n"
)
AUTHORIZATION_OPEN_V3 = (
    AUTHORIZATION_OPEN_V2.replace("CREATE OR REPLACE FUNCTION ", "CREATE FUNCTION ", 1)
    .replace("    p_client_ip inet,\n", _OPEN_V3_ARGUMENTS, 1)
    .replace(_LOCKED, _LOCKED + _OPEN_STATE_CHECK, 1)
)
assert AUTHORIZATION_OPEN_V3.count("p_token_state") == 3
assert AUTHORIZATION_OPEN_V3.count("p_price_current") == 2

DROP_AUTHORIZATION_OPEN_V3 = r"""
DROP FUNCTION IF EXISTS usage_authorization_open(
    bigint, bigint, text, timestamptz, text, text, timestamptz, bigint, boolean, bigint,
    bigint, bigint, bigint, bigint, numeric, text, text, text, bigint, bigint, numeric, text,
    inet, text, boolean);
"""

_CAPTURE_STATE_CHECK = """\
    IF p_token_state IS NOT NULL
       AND accounts_token_state(p_token) IS DISTINCT FROM p_token_state THEN
        RAISE EXCEPTION 'usage_capture_counted: token % changed since it was read', p_token
              USING ERRCODE = 'UC003';
    END IF;
"""
_CAPTURE_V2_ARGUMENTS = "    p_record jsonb, p_token_state text DEFAULT NULL,\n    OUT"
CAPTURE_COUNTED_V2 = CAPTURE_COUNTED_V1.replace(
    "    p_record jsonb,\n    OUT", _CAPTURE_V2_ARGUMENTS, 1
).replace("FOR NO KEY UPDATE;\n", "FOR NO KEY UPDATE;\n" + _CAPTURE_STATE_CHECK, 1)
assert CAPTURE_COUNTED_V2.count("p_token_state") == 3

DROP_CAPTURE_COUNTED_V2 = r"""
DROP FUNCTION IF EXISTS usage_capture_counted(
    bigint, bigint, date, date, date, date, bigint, bigint, bigint, text, timestamptz, jsonb,
    text);
"""
