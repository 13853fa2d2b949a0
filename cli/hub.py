"""``pull`` and ``push``: exchange concepts with the Hugging Face Hub.

Thin wrappers over :mod:`conceptlib.hub`; huggingface_hub is imported only when a command runs,
so ``conceptlib --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conceptlib._terminal import printable
from conceptlib.cli._options import ConceptArg, HomeOpt, JsonOpt, TokenOpt
from conceptlib.cli._output import err, out, print_json

if TYPE_CHECKING:
    from conceptlib.hub import AuthorItem, AuthorSummary, PullResult


def _library(home: Path | None) -> Any:
    from conceptlib import config
    from conceptlib.library import Library

    return Library.open(config.home(home))


def _short(commit: str | None) -> str:
    return commit[:7] if commit else "-"


@contextlib.contextmanager
def _working(message: str, *, show: bool) -> Iterator[None]:
    """A spinner on stderr (terminals only) in place of huggingface_hub's bars and retry logs."""
    from rich.text import Text

    from conceptlib.hub import quiet_client_output

    # A Text, not a str: rich reads a str status as markup, and ``message`` holds a repository
    # name as typed ("[bold]" would be styled, a stray "[/x]" would crash the spinner).
    status = Text(printable(message))
    with quiet_client_output(), err.status(status) if show and err.is_terminal else contextlib.nullcontext():
        yield


def _show_pull(result: PullResult) -> None:
    out.print(f"{result.status:<9} {result.name:<24} {result.repo_id}@{_short(result.commit)}", markup=False)
    for path, reason in result.skipped.items():
        # The repository's owner chose these names: escaped.
        err.print(f"  skipped {printable(path, None)}: {printable(reason, None)}", markup=False)
    for existing, score in result.near_duplicates.items():
        err.print(f"  {result.name}: near-duplicate of {existing} ({score:.2f})", markup=False)
    if result.status == "updated" and result.previous_content_hash and result.previous_content_hash != result.content_hash:
        err.print(
            f"  {result.name}: vectors changed ({result.previous_content_hash[:12]} → {(result.content_hash or '')[:12]}); "
            "the previous content hash is kept in its history",
            markup=False,
        )


def _show_summary(summary: AuthorSummary, items: list[AuthorItem]) -> None:
    for item in items:
        if item.status in ("added", "updated"):
            out.print(f"{item.status:<9} {item.name or '':<24} {item.repo_id}@{_short(item.commit)}", markup=False)
        elif item.status == "failed":
            out.print(f"failed    {item.repo_id}: {printable(item.reason or '', None)}", markup=False)
        elif item.reason and not item.reason.startswith("unchanged"):
            out.print(f"skipped   {item.repo_id}: {printable(item.reason, None)}", markup=False)
    counts = {s: sum(1 for i in items if i.status == s) for s in ("added", "updated", "skipped", "failed")}
    out.print(
        f"{summary.author}: {counts['added']} added, {counts['updated']} updated, "
        f"{counts['skipped']} skipped, {counts['failed']} failed",
        markup=False,
    )


def _pull_author(library: Any, author: str, limit: int | None, jobs: int, json_: bool, force: bool = False) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from conceptlib.hub import AuthorSummary, pull_author, quiet_client_output

    seen: list[AuthorItem] = []
    # markup=False: the description holds the --author value as typed, checked only later.
    bar = Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    )
    task = bar.add_task(f"Pulling {printable(author)}", total=None)

    def progress(done: int, total: int, item: AuthorItem | None) -> None:
        bar.update(task, completed=done, total=total)
        if item is not None:
            seen.append(item)
            if item.status == "failed":
                bar.console.print(f"failed: {item.repo_id}: {printable(item.reason or '', None)}", markup=False, highlight=False)

    try:
        with bar, quiet_client_output():
            summary = pull_author(library, author, limit=limit, jobs=jobs, progress=progress, force=force)
    except KeyboardInterrupt:
        partial = AuthorSummary(author, list(seen))
        if json_:
            print_json({**partial.to_dict(), "interrupted": True})
        else:
            _show_summary(partial, partial.items)
        err.print("Interrupted: finished concepts are kept; run the same command again to resume.", markup=False)
        raise typer.Exit(130) from None
    if json_:
        print_json(summary.to_dict())
    else:
        _show_summary(summary, summary.items)
    if summary.exit_code:
        # 2 when a repository's content was refused (bad input), 1 when only the Hub failed.
        raise typer.Exit(summary.exit_code)


def pull(
    repos: Annotated[
        list[str] | None,
        typer.Argument(help="Repositories as NAMESPACE/NAME[@REVISION] (branch, tag, refs/pr/N or commit).", show_default=False),
    ] = None,
    as_: Annotated[str | None, typer.Option("--as", help="Name of the concept in the library (one repository only).")] = None,
    author: Annotated[str | None, typer.Option("--author", help="Pull every concept repository of this user or organisation.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="With --author: at most this many repositories.")] = None,
    # max is conceptlib.hub.MAX_JOBS, written out: importing conceptlib.hub here would slow every
    # command's start-up (tests/test_cli_options.py keeps the two equal).
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, max=64, help="With --author: repositories pulled at once, 1 to 64 [default: 4].")
    ] = None,
    file: Annotated[str | None, typer.Option("--file", help="The embedding file to take when a repository holds several.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download and re-import even when the revision is unchanged.")] = False,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Import concepts from the Hugging Face Hub, with their provenance and images.

    Pulling an unchanged revision again does nothing; a new revision updates the concept and
    keeps the previous content hash in its history. Honours HF_TOKEN / `hf auth login`,
    HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE (then pulls resolve from the local cache).

    Example: conceptlib pull sd-concepts-library/cat-toy sd-concepts-library/midjourney-style@main

    Example: conceptlib pull --author sd-concepts-library --limit 50 --jobs 8
    """
    from conceptlib.cli._errors import render_error
    from conceptlib.errors import UsageError
    from conceptlib.hub import pull as do_pull

    repos = repos or []
    if author is None and not repos:
        raise UsageError("name at least one repository, or an organisation with --author", hint="conceptlib pull sd-concepts-library/cat-toy")
    if author is not None and repos:
        raise UsageError("give repositories or --author, not both")
    if author is None and (limit is not None or jobs is not None):
        raise UsageError("--limit and --jobs apply to --author")
    if as_ is not None and (author is not None or len(repos) != 1):
        raise UsageError("--as names one concept: pull a single repository with it")
    if file is not None and len(repos) != 1:
        raise UsageError("--file picks a file of one repository: pull a single repository with it")
    if token is not None and len(repos) != 1:
        raise UsageError("--token names one concept: pull a single repository with it")
    library = _library(home)
    if author is not None:
        _pull_author(library, author, limit, jobs or 4, json_, force)
        return
    results: list[dict[str, Any]] = []
    worst = 0
    for repo in repos:
        try:
            with _working(f"Pulling {repo}", show=not json_):
                result = do_pull(library, repo, name=as_, filename=file, force=force, token=token)
        except Exception as exc:
            if len(repos) == 1 and not json_:
                raise  # the error boundary in app.main prints it (--json still gets its list)
            message, code = render_error(exc)
            err.print(message, markup=False)
            results.append({"repo_id": repo, "status": "failed", "error": message.removeprefix("Error: ")})
            worst = max(worst, code)
            continue
        results.append(result.to_dict())
        if not json_:
            _show_pull(result)
    if json_:
        print_json(results)
    if worst:
        raise typer.Exit(worst)


def push(
    name: ConceptArg,
    repo_id: Annotated[str, typer.Option("--repo-id", help="Target repository, NAMESPACE/NAME.", show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private (when it does not exist).")] = False,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request on the existing repository; prints its URL.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to commit to (created from main if missing).")] = None,
    with_bin: Annotated[bool, typer.Option("--with-bin", help="Also upload learned_embeds.bin for old loaders (SD 1.x/2.x).")] = False,
    license: Annotated[str | None, typer.Option("--license", help="License id for the model card (default: the concept's, else mit).")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Publish a concept to the Hub in sd-concepts-library layout, in one commit.

    Uploads learned_embeds.safetensors, token_identifier.txt, type_of_concept.txt,
    concept_images/ and a model card (license, base_model, tags, the token). Prints the commit
    URL, or with --create-pr the pull request's URL; a concept the repository already holds
    unchanged is not committed again (nothing is printed on stdout then).

    Example: conceptlib push cat-toy --repo-id me/cat-toy

    Example: conceptlib push cat-toy --repo-id sd-concepts-library/cat-toy --create-pr
    """
    from conceptlib.hub import push as do_push

    library = _library(home)
    with _working(f"Pushing {name} to {repo_id}", show=not json_):
        result = do_push(
            library, name, repo_id, private=private, create_pr=create_pr, revision=revision,
            include_bin=with_bin, license=license, commit_message=message,
        )
    if json_:
        print_json(result.to_dict())
        return
    if result.status == "unchanged":
        # No URL on stdout: there is no new commit or pull request to point at.
        nothing = "nothing pushed, no pull request opened" if create_pr else "nothing pushed"
        err.print(f"{result.name} is already up to date on {result.repo_id}@{result.revision} ({nothing})", markup=False)
        return
    out.print(result.pr_url or result.commit_url, markup=False)
    where = f"pull request {result.pr_url}" if result.pr_url else f"{result.repo_id}@{result.revision}"
    removed = f", removed {len(result.removed)} left by an earlier push ({', '.join(result.removed)})" if result.removed else ""
    err.print(f"Pushed {result.name} ({len(result.files)} files) to {where}, commit {_short(result.commit)}{removed}", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``pull`` and ``push``."""
    app.command("pull")(pull)
    app.command("push")(push)
