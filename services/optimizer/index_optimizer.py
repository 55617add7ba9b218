"""Index advice from PostgreSQL's own statistics and plans (the original `database.index_optimizer`).

- :meth:`IndexOptimizer.analyze_index_usage`: every user index with its scans and size, the
  unused ones (never scanned, not enforcing a constraint), exact duplicates, and indexes whose
  columns are a prefix of another index on the same table (redundant for lookups).
- :meth:`IndexOptimizer.recommend_new_indexes`: the queries to look at come from
  `pg_stat_statements` when the extension is installed and preloaded (the statements this
  database ran; their parameterised texts get the generic plan PostgreSQL would cache for
  them), and always include the fleet's own known queries with sample values from the data.
  Each is planned with `EXPLAIN (FORMAT JSON)`; a sequential scan that filters a large table
  down to a small share of its rows recommends an index on the filtered columns (equality
  columns first, then ranges, then the sort key). Each recommendation's `source` says where
  its query came from: `pg_stat_statements`, `known query: ...` or `extra query: ...`.
- :meth:`IndexOptimizer.create_index`: identifiers are checked against the catalog and quoted;
  the index is built `CONCURRENTLY` (no write lock on the table) and `IF NOT EXISTS`.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

__all__ = [
    "KNOWN_QUERIES",
    "IdentifierError",
    "IndexOptimizer",
    "IndexRecommendation",
    "quote_identifier",
]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Tables smaller than this are cheaper to scan than to index.
MIN_TABLE_ROWS = 10_000
# A scan that keeps more than this share of the rows is not helped by a B-tree.
MAX_SELECTIVITY = 0.05

# The fleet's recurring questions of the primary, as the analytics and anomaly code asks
# them; `$n` are filled from a sample row (see _SAMPLE).
KNOWN_QUERIES: list[tuple[str, str]] = [
    (
        "events of one person in a period",
        "SELECT * FROM access_events WHERE person_id = $1 AND time >= $5 ORDER BY time",
    ),
    (
        "events at one door in a period",
        "SELECT * FROM access_events WHERE door_id = $2 AND time >= $5 ORDER BY time",
    ),
    (
        "events of one facility in a period",
        "SELECT count(*) FROM access_events WHERE facility_id = $3 AND time >= $5",
    ),
    ("history of one badge", "SELECT * FROM access_events WHERE badge_id = $4 ORDER BY time DESC LIMIT 100"),
    (
        "denials in a period (anomalies)",
        "SELECT person_id, time FROM access_events WHERE access_result = 'Denied' AND time >= $5",
    ),
    ("events in a period (summary)", "SELECT count(*) FROM access_events WHERE time >= $5"),
]
_SAMPLE = """
SELECT person_id, door_id, coalesce(facility_id, ''), coalesce(badge_id, ''),
       (SELECT max(time) FROM access_events) - interval '1 day'
FROM access_events TABLESAMPLE SYSTEM (1) LIMIT 1
"""


class IdentifierError(ValueError):
    """An argument that is not a plain identifier, or not a table/column of the database."""


def quote_identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise IdentifierError(
            f"refused {name!r}: not a plain SQL identifier (letters, digits and _ only, at most 63)"
        )
    return '"' + name.replace('"', '""') + '"'


@dataclass
class IndexRecommendation:
    table: str
    columns: list[str]
    reason: str
    query: str
    source: str
    seq_scan_rows: float
    table_rows: float
    estimated_cost: float
    create_command: str = field(default="")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class IndexOptimizer:
    def __init__(
        self, dsn: str, *, schema: str = "public", extra_queries: list[tuple[str, str]] | None = None
    ):
        self.dsn = dsn
        self.schema = schema
        self.extra_queries = extra_queries or []

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(self.dsn, timeout=10, command_timeout=120)
        return conn

    # ---- usage -------------------------------------------------------------------------

    async def analyze_index_usage(self) -> dict[str, Any]:
        conn = await self._connect()
        try:
            rows = await conn.fetch(
                """
                SELECT s.relname AS table, s.indexrelname AS index, s.idx_scan AS scans,
                       s.idx_tup_read AS tuples_read, pg_relation_size(s.indexrelid) AS size_bytes,
                       i.indisunique AS is_unique, i.indisprimary AS is_primary, i.indisvalid AS is_valid,
                       pg_get_indexdef(s.indexrelid) AS definition,
                       i.indkey::int2[] AS key, i.indclass::oid[]::text AS opclasses,
                       coalesce(pg_get_expr(i.indexprs, i.indrelid), '') AS expressions,
                       coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS predicate,
                       ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                             ORDER BY k.n)::text[] AS columns,
                       EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid)
                           AS backs_constraint
                FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
                WHERE s.schemaname = $1
                ORDER BY s.relname, s.indexrelname
                """,
                self.schema,
            )
            tables = await conn.fetch(
                """SELECT relname AS table, seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx_scan,
                          n_live_tup AS live_rows, pg_total_relation_size(relid) AS total_bytes
                   FROM pg_stat_user_tables WHERE schemaname = $1 ORDER BY relname""",
                self.schema,
            )
        finally:
            await conn.close()
        indexes = [
            {
                "table": r["table"],
                "index": r["index"],
                "scans": int(r["scans"]),
                "tuples_read": int(r["tuples_read"]),
                "size_bytes": int(r["size_bytes"]),
                "unique": r["is_unique"],
                "primary": r["is_primary"],
                "valid": r["is_valid"],
                "columns": list(r["columns"]),
                "definition": r["definition"],
            }
            for r in rows
        ]
        unused = [
            {"table": r["table"], "index": r["index"], "size_bytes": int(r["size_bytes"])}
            for r in rows
            if int(r["scans"]) == 0 and not r["is_unique"] and not r["backs_constraint"]
        ]
        signature: dict[tuple[Any, ...], list[str]] = {}
        for r in rows:
            key = (r["table"], tuple(r["key"]), r["opclasses"], r["expressions"], r["predicate"])
            signature.setdefault(key, []).append(r["index"])
        duplicates = [
            {"table": key[0], "indexes": names} for key, names in signature.items() if len(names) > 1
        ]
        redundant = []
        for r in rows:
            if r["is_unique"] or r["expressions"] or r["predicate"]:
                continue
            for other in rows:
                longer = list(other["key"])
                mine = list(r["key"])
                if (
                    other["index"] != r["index"]
                    and other["table"] == r["table"]
                    and not other["predicate"]
                    and len(longer) > len(mine)
                    and longer[: len(mine)] == mine
                ):
                    redundant.append({"table": r["table"], "index": r["index"], "covered_by": other["index"]})
                    break
        return {
            "indexes": indexes,
            "unused": unused,
            "duplicates": duplicates,
            "redundant_prefix": redundant,
            "tables": [dict(t) for t in tables],
        }

    # ---- recommendations ---------------------------------------------------------------

    async def _statement_queries(self, conn: asyncpg.Connection) -> list[tuple[str, str]]:
        installed = await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'pg_stat_statements'"
        )
        if not installed:
            return []
        try:
            # The view covers every database of the server: a statement another database ran
            # (the replica's, say) must not become advice for this one. `_` is a LIKE wildcard,
            # hence the escaped `pg\_` that skips catalog queries only.
            rows = await conn.fetch(
                r"""SELECT query FROM pg_stat_statements
                    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                      AND query ILIKE 'select%' AND query NOT ILIKE '%pg\_%'
                    ORDER BY total_exec_time DESC LIMIT 50"""
            )
        except asyncpg.PostgresError:
            return []  # installed but not preloaded
        return [("pg_stat_statements", r["query"]) for r in rows]

    async def recommend_new_indexes(self) -> list[IndexRecommendation]:
        conn = await self._connect()
        try:
            candidates: dict[tuple[str, tuple[str, ...]], IndexRecommendation] = {}
            queries: list[tuple[str, str, list[Any] | None]] = [
                (src, q, None) for src, q in await self._statement_queries(conn)
            ]
            sample = await self._sample(conn)
            if sample is not None:
                queries += [(f"known query: {name}", q, sample) for name, q in KNOWN_QUERIES]
            queries += [(f"extra query: {name}", q, None) for name, q in self.extra_queries]
            for source, query, args in queries:
                plan = await self._explain(conn, query, args)
                if plan is None:
                    continue
                for rec in await self._seq_scans(conn, plan, query, source):
                    key = (rec.table, tuple(rec.columns))
                    if key not in candidates or candidates[key].estimated_cost < rec.estimated_cost:
                        candidates[key] = rec
        finally:
            await conn.close()
        return sorted(candidates.values(), key=lambda r: -r.estimated_cost)

    async def _sample(self, conn: asyncpg.Connection) -> list[Any] | None:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{self.schema}.access_events")
        if not exists:
            return None
        row = await conn.fetchrow(_SAMPLE)
        if row is None:
            row = await conn.fetchrow(_SAMPLE.replace("TABLESAMPLE SYSTEM (1)", ""))
        return list(row) if row is not None else None

    async def _explain(
        self, conn: asyncpg.Connection, query: str, args: list[Any] | None
    ) -> dict[str, Any] | None:
        used = sorted({int(n) for n in re.findall(r"\$(\d+)", query)})
        try:
            if args is not None:
                # Renumber $n to the placeholders this query uses, so asyncpg gets exactly those.
                mapping = {n: i + 1 for i, n in enumerate(used)}
                text = re.sub(r"\$(\d+)", lambda m: f"${mapping[int(m.group(1))]}", query)
                raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {text}", *[args[n - 1] for n in used])
            elif used:
                raw = await self._explain_generic(conn, query, max(used))
            else:
                raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}")
        except (asyncpg.PostgresError, IndexError, KeyError, ValueError):
            return None
        parsed = json.loads(raw) if isinstance(raw, str) else raw
        plan: dict[str, Any] = parsed[0]["Plan"]
        return plan

    async def _explain_generic(self, conn: asyncpg.Connection, query: str, params: int) -> Any:
        """The plan PostgreSQL caches for `query` whatever values its `$1..$params` take.

        `EXPLAIN (GENERIC_PLAN)` cannot go through asyncpg: the extended protocol turns the
        placeholders into bind parameters, asyncpg then demands values, and bound values (even
        NULLs) are folded into the plan. A prepared statement executed under
        `plan_cache_mode = force_generic_plan` is planned without looking at its arguments, so
        the NULLs passed to it here only fill the slots.
        """
        if ";" in query:
            raise ValueError("one statement only")  # PREPARE goes through the simple protocol
        name = f"index_optimizer_{secrets.token_hex(6)}"
        await conn.execute(f"PREPARE {name} AS {query}")
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                nulls = ", ".join(["NULL"] * params)
                return await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({nulls})")
        finally:
            await conn.execute(f"DEALLOCATE {name}")

    async def _seq_scans(
        self, conn: asyncpg.Connection, plan: dict[str, Any], query: str, source: str
    ) -> list[IndexRecommendation]:
        out = []
        for node, sort_key in _walk(plan, []):
            if node.get("Node Type") != "Seq Scan" or "Filter" not in node:
                continue
            table = node.get("Relation Name", "")
            info = await conn.fetchrow(
                """SELECT c.reltuples, ARRAY(SELECT attname FROM pg_attribute
                          WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)::text[] AS columns
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = $1 AND c.relname = $2""",
                self.schema,
                table,
            )
            if info is None:
                continue
            table_rows = max(float(info["reltuples"]), 0.0)
            rows_out = float(node.get("Plan Rows", 0))
            if table_rows < MIN_TABLE_ROWS or rows_out / max(table_rows, 1.0) > MAX_SELECTIVITY:
                continue
            columns = _filter_columns(node["Filter"], list(info["columns"]))
            for key in sort_key:
                name = key.split(" ")[0].split(".")[-1].strip('()"')
                if name in info["columns"] and name not in columns:
                    columns.append(name)
            if not columns:
                continue
            if await _has_index_starting_with(conn, self.schema, table, columns[0]):
                continue
            rec = IndexRecommendation(
                table=table,
                columns=columns,
                query=" ".join(query.split()),
                source=source,
                reason=(
                    f"sequential scan of {table} (~{table_rows:,.0f} rows) keeps ~{rows_out:,.0f} rows "
                    f"through filter {node['Filter']}"
                ),
                seq_scan_rows=table_rows,
                table_rows=table_rows,
                estimated_cost=float(node.get("Total Cost", 0.0)),
            )
            rec.create_command = "python -m services.optimizer.index_cli create " + " ".join(
                [table, *columns]
            )
            out.append(rec)
        return out

    # ---- creation ----------------------------------------------------------------------

    async def validate(self, table: str, columns: list[str]) -> tuple[str, list[str]]:
        """Quote `table` and `columns` after checking their form and that they exist."""
        quoted_table = quote_identifier(table)
        quoted_columns = [quote_identifier(c) for c in columns]
        if not columns:
            raise IdentifierError("give at least one column")
        if len(set(columns)) != len(columns):
            raise IdentifierError("a column is named twice")
        conn = await self._connect()
        try:
            existing = await conn.fetchval(
                """SELECT ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0
                                AND NOT attisdropped)::text[]
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'm')""",
                self.schema,
                table,
            )
        finally:
            await conn.close()
        if existing is None:
            raise IdentifierError(f"refused: no table {table!r} in schema {self.schema!r}")
        missing = [c for c in columns if c not in existing]
        if missing:
            raise IdentifierError(
                f"refused: table {table!r} has no column(s) {missing}; it has {sorted(existing)}"
            )
        return quoted_table, quoted_columns

    def index_name(self, table: str, columns: list[str]) -> str:
        name = f"{table}_{'_'.join(columns)}_idx"
        if len(name) > 63:
            name = name[:54] + "_" + format(abs(hash(name)) % 16**8, "08x")
        return name

    async def create_index(self, table: str, columns: list[str], *, dry_run: bool = False) -> str:
        """Build the index (or only return its command with `dry_run`); returns the SQL."""
        quoted_table, quoted_columns = await self.validate(table, columns)
        name = quote_identifier(self.index_name(table, columns))
        sql = (
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} "
            f"ON {quote_identifier(self.schema)}.{quoted_table} ({', '.join(quoted_columns)})"
        )
        if dry_run:
            return sql
        conn = await self._connect()
        try:
            await conn.execute(sql, timeout=3600)
            await conn.execute(f"ANALYZE {quote_identifier(self.schema)}.{quoted_table}")
        finally:
            await conn.close()
        return sql


def _walk(node: dict[str, Any], sort_key: list[str]) -> list[tuple[dict[str, Any], list[str]]]:
    key = (
        node.get("Sort Key", sort_key) if node.get("Node Type") in {"Sort", "Incremental Sort"} else sort_key
    )
    out = [(node, key)]
    for child in node.get("Plans", []):
        out += _walk(child, key)
    return out


def _filter_columns(expression: str, columns: list[str]) -> list[str]:
    """Columns named in a plan's filter: equality comparisons first, then the rest, in order."""
    equal, other = [], []
    for column in columns:
        pattern = rf"\b{re.escape(column)}\b"
        if not re.search(pattern, expression):
            continue
        if re.search(rf"\b{re.escape(column)}\)?\s*=\s", expression):
            equal.append(column)
        else:
            other.append(column)
    return equal + other


async def _has_index_starting_with(conn: asyncpg.Connection, schema: str, table: str, column: str) -> bool:
    found = await conn.fetchval(
        """SELECT count(*) > 0 FROM pg_index i
           JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
           WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND i.indisvalid""",
        schema,
        table,
        column,
    )
    return bool(found)
