"""PostgreSQL objects of the accounts app, installed by migrations (which import the text
they were written with, so a later version goes in a new constant)."""

# What a token's authentication and authorization read, as one digest: the token row, its
# owner, group, tier and membership, and its wallet's minimum balance, each row whole
# except for the counters that change with use (spend, budget and member counters,
# ``last_used_at``, the owner's ``last_login``), so a column added later is covered by
# default. A web process keeps recently authenticated tokens with this digest
# (``config.cached_reads``); the metering functions recompute it under the
# token's lock and refuse to act when it differs, so a cached token never acts on state
# that has changed since it was read, whichever process or statement changed it.
# PL/pgSQL rather than SQL so its plan is kept for the session (about 40 µs a call).
STATE_FUNCTION_V1 = r"""
CREATE FUNCTION accounts_token_state(p_token bigint) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
RETURN (SELECT md5(concat_ws('|',
    (to_jsonb(t)
        - '{used_micro,budget_spent_micro,budget_period_start,last_used_at}'::text[])::text,
    (to_jsonb(u) - 'last_login')::text,
    to_jsonb(g)::text,
    to_jsonb(b)::text,
    coalesce((to_jsonb(m) - '{spend_month,spend_month_micro}'::text[])::text, 'none'),
    coalesce(w.min_balance_micro::text, 'default')))
  FROM accounts_apitoken t
  JOIN accounts_user u ON u.id = t.user_id
  JOIN accounts_tokengroup g ON g.id = t.group_id
  JOIN accounts_billingtier b ON b.id = g.tier_id
  LEFT JOIN accounts_membership m ON m.id = t.membership_id
  JOIN wallet_wallet w ON w.id = t.wallet_id
 WHERE t.id = p_token);
END $$;
"""

DROP_STATE_FUNCTION_V1 = "DROP FUNCTION IF EXISTS accounts_token_state(bigint);"
