"""vers CLI commands: maintenance (``fsck``, ``gc``)."""

from __future__ import annotations

import sys

import click

from vers.cli._group import cli, info, open_repo, progress, saying


@cli.command("fsck")
@click.option("--full", is_flag=True,
              help="Also check that every node's level matches its place in its tree.")
@click.option("--salvage", "salvage_dir", metavar="DIR", default=None,
              type=click.Path(file_okay=False),
              help="Instead, copy every intact commit, and the refs naming one, into a new "
                   "repository DIR (docs/recovery.md).")
@click.option("--remote", "check_remote", is_flag=True,
              help="In a lazy repository, also check that what is not stored here is on the "
                   "promisor remote (reads its bundle indexes).")
def fsck_cmd(full: bool, salvage_dir: str | None, check_remote: bool) -> None:
    """Re-hash every object and check that every ref and reflog entry reaches complete state.

    Each problem is printed on its own line (what, which object, reached from which ref and
    commit); exit status 1 if there is any, 0 if none. With --salvage, exit status 1 if any ref
    could not be copied.
    """
    from vers.porcelain.fsck import fsck_repo

    if salvage_dir is not None:
        from vers.porcelain.salvage import salvage

        result = salvage(open_repo(), salvage_dir)
        for line in result.lines():
            info(line)
        sys.exit(1 if result.lost_refs else 0)
    report = fsck_repo(open_repo(), full=full, on_problem=lambda p: click.echo(str(p)),
                       remote=check_remote, progress=progress())
    info(report.summary())
    if not report.ok:
        sys.exit(1)


@cli.command("gc")
@click.option("--grace", default="2h", show_default=True, metavar="DURATION",
              help="Only objects stored longer ago than this may go "
                   "(protects writers in progress).")
@click.option("--expire-reflog", default="90d", show_default=True, metavar="DURATION",
              help="Drop reflog entries older than this ('never' keeps them all).")
@click.option("--max-unused", type=click.FloatRange(0, 100), default=10.0, show_default=True,
              metavar="PERCENT",
              help="Rewrite a pack once more than this much of it is dead bytes; below that, "
                   "unreachable objects only leave the index (0: reclaim all space now).")
@click.option("-n", "--dry-run", is_flag=True,
              help="Show what would be kept and removed; change nothing.")
@click.option("--keep-last", type=int, default=0, metavar="N", help="Keep the N newest commits.")
@click.option("--keep-within", default=None, metavar="DURATION",
              help="Keep every commit newer than now - DURATION.")
@click.option("--keep-minutely", type=int, default=0, metavar="N",
              help="Keep the newest commit of each of the last N minutes that have one.")
@click.option("--keep-hourly", type=int, default=0, metavar="N", help="Same, per hour.")
@click.option("--keep-daily", type=int, default=0, metavar="N", help="Same, per day (UTC).")
@click.option("--keep-weekly", type=int, default=0, metavar="N", help="Same, per ISO week.")
@click.option("--keep-monthly", type=int, default=0, metavar="N", help="Same, per month.")
@click.option("--keep-yearly", type=int, default=0, metavar="N", help="Same, per year.")
def gc_cmd(
    grace: str,
    expire_reflog: str,
    max_unused: float,
    dry_run: bool,
    keep_last: int,
    keep_within: str | None,
    keep_minutely: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
) -> None:
    """Expire old reflog entries, apply a retention policy, and prune unreachable objects.

    Without --keep-* options history is left as it is. With them, commits on branches that no
    rule keeps are removed from history (kept commits above them are rewritten with the same
    state, time and message); branch heads and tagged commits are always kept.
    """
    from vers.porcelain.gc import Policy, gc_repo, parse_duration

    policy = Policy(
        last=keep_last, minutely=keep_minutely, hourly=keep_hourly, daily=keep_daily,
        weekly=keep_weekly, monthly=keep_monthly, yearly=keep_yearly,
        within=parse_duration(keep_within) if keep_within is not None else None,
    )
    meters = progress()
    say = saying(meters)
    report = gc_repo(
        open_repo(),
        grace=parse_duration(grace),
        expire_reflog=parse_duration(expire_reflog),
        policy=policy,
        dry_run=dry_run,
        max_unused=max_unused / 100,
        say=lambda msg: say(f"gc: {msg}"),
        progress=meters,
    )
    for line in report.lines():
        click.echo(line)
