"""Write the results page (docs/results.md) from the stored leaderboard.

Reads `<root>/reports/leaderboard.json` (written by the `leaderboard` asset from every stored
evaluation bundle), renders its tables (ranked, per fold, validation against test and
calibration, one section per protocol) and puts in front what produced them: the command, the
date of the leaderboard, the commit of the code, and whether the data were synthetic. Nothing is
recomputed, so the page says exactly what the leaderboard says.

    uv run pamap demo --models all
    uv run python bench/results.py --root data --out docs/results.md \
        --command "uv run pamap demo --models all"
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from ml_core.evaluation.leaderboard import leaderboard_markdown
from ml_core.io import write_text

PROJECT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The code's commit, marked `-dirty` when the working tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("-dirty" if dirty else "")


def results_page(root: Path, command: str, image: str | None) -> str:
    source = root / "reports" / "leaderboard.json"
    if not source.is_file():
        raise SystemExit(f"{source}: no leaderboard; materialize `leaderboard` (pamap demo) first")
    saved = json.loads(source.read_text())
    title = saved.pop("title")
    written = datetime.fromtimestamp(source.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
    protocols = ", ".join(s["protocol"]["id"] for s in saved["protocols"]) or "none"
    data = (
        "**synthetic** (the generated PAMAP2-format set: these numbers say that the pipeline "
        "learns, not how the models do on real recordings)"
        if "synthetic data" in title
        else "the PAMAP2 recordings"
    )
    lines = [
        "# Results",
        "",
        "Written by `bench/results.py` from the stored leaderboard; regenerate with the commands",
        "below. What each column means: [evaluation.md](evaluation.md).",
        "",
        f"- Data: {data}.",
        f"- Produced by: `{command}`; leaderboard written {written}.",
        f"- Code: commit `{commit()}`.",
        f"- Protocols: {protocols} (each section below names its window, stride, rate, class set,",
        "  validation people and metric; each row its training settings).",
        "",
        "```bash",
        command,
        f'uv run python bench/results.py --root data --out docs/results.md --command "{command}"',
        "```",
        "",
    ]
    body = leaderboard_markdown(saved, title).splitlines()
    # The leaderboard's own title becomes a section of this page.
    body = [("#" + line if line.startswith("#") else line) for line in body]
    lines += body
    if image:
        lines += ["", f"![{title}: LOSO macro F1 per fold, pooled with its 95 % CI]({image})", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="the data root")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument(
        "--command",
        default="uv run pamap demo --models all",
        help="the command that produced the results, as the page shows it",
    )
    parser.add_argument(
        "--image",
        action="store_true",
        help="also copy leaderboard.png to docs/images/ beside the page and show it",
    )
    args = parser.parse_args(argv)
    image = None
    if args.image:
        target = args.out.parent / "images" / "leaderboard.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.root / "reports" / "leaderboard.png", target)
        image = "images/leaderboard.png"
    page = results_page(args.root, args.command, image)
    write_text(page, args.out)
    print(f"wrote {args.out} ({len(page.splitlines())} lines) from {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
