"""PostgreSQL objects installed by migrations. Kept in a module so a later migration can
re-install a changed version; migrations import the text they were written with."""

# The settle step: the same steps as ``wallet.services._settle_python``, in one call, so
# the wallet row is locked only for this call and its commit. Lots are read and written
# only under the wallet's row lock (every path locks the wallet first), so they need no
# locks of their own here.
SETTLE_V1 = r"""
CREATE OR REPLACE FUNCTION wallet_settle(
    p_wallet bigint, p_amount bigint, p_release bigint, p_partial boolean,
    p_kind text, p_key text, p_ref_type text, p_ref_id text, p_actor bigint, p_reason text,
    p_hold bigint, p_corrects bigint, p_now timestamptz,
    OUT o_outcome text, OUT o_entry bigint, OUT o_charged bigint,
    OUT o_balance_after bigint, OUT o_available bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_balance bigint; v_held bigint; v_next timestamptz; v_due bigint := 0;
    v_need bigint; v_take bigint; v_lot record;
BEGIN
    -- Fast path: enough credits and no lot due to expire. One UPDATE takes the row lock
    -- and moves the balance.
    UPDATE wallet_wallet SET balance = balance - p_amount, held = held - p_release
     WHERE id = p_wallet AND balance - held + p_release >= p_amount
       AND (next_expiry_at IS NULL OR next_expiry_at > p_now)
    RETURNING balance INTO o_balance_after;
    IF FOUND THEN
        o_charged := p_amount;
    ELSE
        SELECT w.balance, w.held, w.next_expiry_at INTO v_balance, v_held, v_next
          FROM wallet_wallet w WHERE w.id = p_wallet FOR UPDATE;
        IF NOT FOUND THEN
            o_outcome := 'not_found'; o_charged := 0; o_balance_after := 0; o_available := 0;
            RETURN;
        END IF;
        -- Lots past their expiry are frozen until the expiry job writes their entry.
        IF v_next IS NOT NULL AND v_next <= p_now THEN
            SELECT COALESCE(SUM(l.remaining), 0) INTO v_due FROM wallet_creditlot l
             WHERE l.wallet_id = p_wallet AND l.has_credits AND l.expires_at <= p_now;
        END IF;
        o_available := v_balance - v_due - v_held + p_release;
        IF p_amount <= o_available THEN
            o_charged := p_amount;
        ELSIF p_partial THEN
            o_charged := GREATEST(o_available, 0);
        ELSE
            o_outcome := 'insufficient'; o_charged := 0; o_balance_after := v_balance;
            RETURN;
        END IF;
        UPDATE wallet_wallet SET balance = balance - o_charged, held = held - p_release
         WHERE id = p_wallet RETURNING balance INTO o_balance_after;
    END IF;
    v_need := o_charged;
    IF v_need > 0 THEN
        FOR v_lot IN
            SELECT l.id, l.remaining FROM wallet_creditlot l
             WHERE l.wallet_id = p_wallet AND l.has_credits
               AND (l.expires_at IS NULL OR l.expires_at > p_now)
             ORDER BY l.priority, l.expires_at NULLS LAST, l.category_rank, l.created_at, l.id
        LOOP
            v_take := LEAST(v_lot.remaining, v_need);
            UPDATE wallet_creditlot SET remaining = remaining - v_take WHERE id = v_lot.id;
            v_need := v_need - v_take;
            EXIT WHEN v_need = 0;
        END LOOP;
        IF v_need <> 0 THEN
            RAISE EXCEPTION 'wallet %: lots hold less than the balance', p_wallet;
        END IF;
        INSERT INTO wallet_ledgerentry (wallet_id, kind, amount, balance_after, reference_type,
                                        reference_id, actor_id, reason, corrects_id,
                                        idempotency_key, created_at)
        VALUES (p_wallet, p_kind, -o_charged, o_balance_after, p_ref_type, p_ref_id, p_actor,
                p_reason, p_corrects, p_key, p_now)
        RETURNING id INTO o_entry;
    END IF;
    -- The capture recorded the full amount as charged; correct it only on a shortfall.
    IF p_hold IS NOT NULL AND o_charged <> p_amount THEN
        UPDATE wallet_hold SET captured_amount = o_charged, shortfall = p_amount - o_charged
         WHERE id = p_hold;
    END IF;
    o_outcome := 'ok';
END $$;
"""

# Capture = mark the hold captured (exactly once) + settle, in one call. The hold row is
# written before the wallet is locked.
CAPTURE_V1 = r"""
CREATE OR REPLACE FUNCTION wallet_capture(
    p_hold bigint, p_amount bigint, p_kind text, p_key text, p_ref_type text,
    p_ref_id text, p_now timestamptz,
    OUT o_outcome text, OUT o_entry bigint, OUT o_charged bigint,
    OUT o_balance_after bigint, OUT o_available bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_wallet bigint; v_amount bigint;
BEGIN
    UPDATE wallet_hold SET status = 'captured', settled_at = p_now, capture_requested = p_amount,
                           captured_amount = p_amount, shortfall = 0
     WHERE id = p_hold AND status = 'active'
    RETURNING wallet_id, amount INTO v_wallet, v_amount;
    IF NOT FOUND THEN
        o_outcome := 'not_active'; o_charged := 0; o_balance_after := 0; o_available := 0;
        RETURN;
    END IF;
    SELECT s.o_outcome, s.o_entry, s.o_charged, s.o_balance_after, s.o_available
      INTO o_outcome, o_entry, o_charged, o_balance_after, o_available
      FROM wallet_settle(v_wallet, p_amount, v_amount, true, p_kind, p_key, p_ref_type,
                         p_ref_id, NULL, '', p_hold, NULL, p_now) s;
END $$;
"""

# A hold: insert it first (outside the wallet's lock), then reserve with one conditional
# UPDATE; if nothing could be reserved, the hold row is removed again and NULL returned.
HOLD_CREATE_V1 = r"""
CREATE OR REPLACE FUNCTION wallet_hold_create(
    p_wallet bigint, p_amount bigint, p_request text, p_expires timestamptz,
    p_ref_type text, p_ref_id text, p_now timestamptz, OUT o_hold bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO wallet_hold (wallet_id, request_id, amount, status, expires_at, created_at,
                             shortfall, reference_type, reference_id)
    VALUES (p_wallet, p_request, p_amount, 'active', p_expires, p_now, 0, p_ref_type, p_ref_id)
    RETURNING id INTO o_hold;
    UPDATE wallet_wallet SET held = held + p_amount
     WHERE id = p_wallet AND status = 'active' AND balance - held >= p_amount
       AND (next_expiry_at IS NULL OR next_expiry_at > p_now);
    IF NOT FOUND THEN
        DELETE FROM wallet_hold WHERE id = o_hold;
        o_hold := NULL;
    END IF;
END $$;
"""

# Wallet and lot rows are updated in place all day; free space on each page lets those
# updates stay heap-only (no index writes) inside the wallet's lock window.
FILLFACTOR_V1 = r"""
ALTER TABLE wallet_wallet SET (fillfactor = 80);
ALTER TABLE wallet_creditlot SET (fillfactor = 80);
"""

APPEND_ONLY_V1 = r"""
CREATE OR REPLACE FUNCTION wallet_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
DROP TRIGGER IF EXISTS wallet_ledgerentry_append_only ON wallet_ledgerentry;
CREATE TRIGGER wallet_ledgerentry_append_only
    BEFORE UPDATE OR DELETE ON wallet_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION wallet_ledger_append_only();
"""

# Version 2 (migration 0004): every call also returns the available credits it leaves
# behind (``o_available_after``: balance - held - frozen), so an API response can report
# them without reading the wallet again; and a hold whose request id is already taken is
# reported as ``duplicate`` instead of raising, so callers inside a transaction need no
# savepoint around the call.
SETTLE_V2 = r"""
DROP FUNCTION IF EXISTS wallet_capture(bigint, bigint, text, text, text, text, timestamptz);
DROP FUNCTION IF EXISTS wallet_settle(bigint, bigint, bigint, boolean, text, text, text, text,
                                      bigint, text, bigint, bigint, timestamptz);
CREATE FUNCTION wallet_settle(
    p_wallet bigint, p_amount bigint, p_release bigint, p_partial boolean,
    p_kind text, p_key text, p_ref_type text, p_ref_id text, p_actor bigint, p_reason text,
    p_hold bigint, p_corrects bigint, p_now timestamptz,
    OUT o_outcome text, OUT o_entry bigint, OUT o_charged bigint,
    OUT o_balance_after bigint, OUT o_available bigint, OUT o_available_after bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_balance bigint; v_held bigint; v_next timestamptz; v_due bigint := 0;
    v_held_after bigint; v_need bigint; v_take bigint; v_lot record;
BEGIN
    -- Fast path: enough credits and no lot due to expire. One UPDATE takes the row lock
    -- and moves the balance.
    UPDATE wallet_wallet SET balance = balance - p_amount, held = held - p_release
     WHERE id = p_wallet AND balance - held + p_release >= p_amount
       AND (next_expiry_at IS NULL OR next_expiry_at > p_now)
    RETURNING balance, held INTO o_balance_after, v_held_after;
    IF FOUND THEN
        o_charged := p_amount;
    ELSE
        SELECT w.balance, w.held, w.next_expiry_at INTO v_balance, v_held, v_next
          FROM wallet_wallet w WHERE w.id = p_wallet FOR UPDATE;
        IF NOT FOUND THEN
            o_outcome := 'not_found'; o_charged := 0; o_balance_after := 0; o_available := 0;
            RETURN;
        END IF;
        -- Lots past their expiry are frozen until the expiry job writes their entry.
        IF v_next IS NOT NULL AND v_next <= p_now THEN
            SELECT COALESCE(SUM(l.remaining), 0) INTO v_due FROM wallet_creditlot l
             WHERE l.wallet_id = p_wallet AND l.has_credits AND l.expires_at <= p_now;
        END IF;
        o_available := v_balance - v_due - v_held + p_release;
        IF p_amount <= o_available THEN
            o_charged := p_amount;
        ELSIF p_partial THEN
            o_charged := GREATEST(o_available, 0);
        ELSE
            o_outcome := 'insufficient'; o_charged := 0; o_balance_after := v_balance;
            o_available_after := GREATEST(v_balance - v_due - v_held, 0);
            RETURN;
        END IF;
        UPDATE wallet_wallet SET balance = balance - o_charged, held = held - p_release
         WHERE id = p_wallet RETURNING balance, held INTO o_balance_after, v_held_after;
    END IF;
    -- Due lots are never burned, so what was frozen before is frozen still.
    o_available_after := GREATEST(o_balance_after - v_held_after - v_due, 0);
    v_need := o_charged;
    IF v_need > 0 THEN
        FOR v_lot IN
            SELECT l.id, l.remaining FROM wallet_creditlot l
             WHERE l.wallet_id = p_wallet AND l.has_credits
               AND (l.expires_at IS NULL OR l.expires_at > p_now)
             ORDER BY l.priority, l.expires_at NULLS LAST, l.category_rank, l.created_at, l.id
        LOOP
            v_take := LEAST(v_lot.remaining, v_need);
            UPDATE wallet_creditlot SET remaining = remaining - v_take WHERE id = v_lot.id;
            v_need := v_need - v_take;
            EXIT WHEN v_need = 0;
        END LOOP;
        IF v_need <> 0 THEN
            RAISE EXCEPTION 'wallet %: lots hold less than the balance', p_wallet;
        END IF;
        INSERT INTO wallet_ledgerentry (wallet_id, kind, amount, balance_after, reference_type,
                                        reference_id, actor_id, reason, corrects_id,
                                        idempotency_key, created_at)
        VALUES (p_wallet, p_kind, -o_charged, o_balance_after, p_ref_type, p_ref_id, p_actor,
                p_reason, p_corrects, p_key, p_now)
        RETURNING id INTO o_entry;
    END IF;
    -- The capture recorded the full amount as charged; correct it only on a shortfall.
    IF p_hold IS NOT NULL AND o_charged <> p_amount THEN
        UPDATE wallet_hold SET captured_amount = o_charged, shortfall = p_amount - o_charged
         WHERE id = p_hold;
    END IF;
    o_outcome := 'ok';
END $$;

CREATE FUNCTION wallet_capture(
    p_hold bigint, p_amount bigint, p_kind text, p_key text, p_ref_type text,
    p_ref_id text, p_now timestamptz,
    OUT o_outcome text, OUT o_entry bigint, OUT o_charged bigint,
    OUT o_balance_after bigint, OUT o_available bigint, OUT o_available_after bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_wallet bigint; v_amount bigint;
BEGIN
    UPDATE wallet_hold SET status = 'captured', settled_at = p_now, capture_requested = p_amount,
                           captured_amount = p_amount, shortfall = 0
     WHERE id = p_hold AND status = 'active'
    RETURNING wallet_id, amount INTO v_wallet, v_amount;
    IF NOT FOUND THEN
        o_outcome := 'not_active'; o_charged := 0; o_balance_after := 0; o_available := 0;
        RETURN;
    END IF;
    SELECT s.o_outcome, s.o_entry, s.o_charged, s.o_balance_after, s.o_available,
           s.o_available_after
      INTO o_outcome, o_entry, o_charged, o_balance_after, o_available, o_available_after
      FROM wallet_settle(v_wallet, p_amount, v_amount, true, p_kind, p_key, p_ref_type,
                         p_ref_id, NULL, '', p_hold, NULL, p_now) s;
END $$;
"""

HOLD_CREATE_V2 = r"""
DROP FUNCTION IF EXISTS wallet_hold_create(bigint, bigint, text, timestamptz, text, text,
                                           timestamptz);
CREATE FUNCTION wallet_hold_create(
    p_wallet bigint, p_amount bigint, p_request text, p_expires timestamptz,
    p_ref_type text, p_ref_id text, p_now timestamptz,
    OUT o_outcome text, OUT o_hold bigint, OUT o_available_after bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO wallet_hold (wallet_id, request_id, amount, status, expires_at, created_at,
                             shortfall, reference_type, reference_id)
    VALUES (p_wallet, p_request, p_amount, 'active', p_expires, p_now, 0, p_ref_type, p_ref_id)
    ON CONFLICT ON CONSTRAINT hold_request_unique DO NOTHING
    RETURNING id INTO o_hold;
    IF o_hold IS NULL THEN
        o_outcome := 'duplicate';
        RETURN;
    END IF;
    UPDATE wallet_wallet SET held = held + p_amount
     WHERE id = p_wallet AND status = 'active' AND balance - held >= p_amount
       AND (next_expiry_at IS NULL OR next_expiry_at > p_now)
    RETURNING balance - held INTO o_available_after;
    IF NOT FOUND THEN
        DELETE FROM wallet_hold WHERE id = o_hold;
        o_hold := NULL;
        o_outcome := 'refused';
        RETURN;
    END IF;
    o_outcome := 'ok';
END $$;
"""

# Reverting 0004 restores the V1 functions (0002's text) after dropping V2.
DROP_V2 = r"""
DROP FUNCTION IF EXISTS wallet_capture(bigint, bigint, text, text, text, text, timestamptz);
DROP FUNCTION IF EXISTS wallet_settle(bigint, bigint, bigint, boolean, text, text, text, text,
                                      bigint, text, bigint, bigint, timestamptz);
DROP FUNCTION IF EXISTS wallet_hold_create(bigint, bigint, text, timestamptz, text, text,
                                           timestamptz);
"""

DROP_V1 = r"""
DROP TRIGGER IF EXISTS wallet_ledgerentry_append_only ON wallet_ledgerentry;
DROP FUNCTION IF EXISTS wallet_ledger_append_only();
DROP FUNCTION IF EXISTS wallet_capture(bigint, bigint, text, text, text, text, timestamptz);
DROP FUNCTION IF EXISTS wallet_hold_create(bigint, bigint, text, timestamptz, text, text,
                                           timestamptz);
DROP FUNCTION IF EXISTS wallet_settle(bigint, bigint, bigint, boolean, text, text, text, text,
                                      bigint, text, bigint, bigint, timestamptz);
"""
