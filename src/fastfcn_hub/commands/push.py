"""`fastfcn-hub push`: convert an mmsegmentation checkpoint and upload weights, processor and card to the hub.

`--dry-run DIR` writes exactly the files that would be uploaded into DIR and contacts nobody.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .convert import add_selection_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="mmsegmentation .pth file, or its URL")
    parser.add_argument("--repo-id", help="hub repository (default: the variant's canonical repo id)")
    add_selection_arguments(parser)
    parser.add_argument("--dry-run", type=Path, metavar="DIR", help="write the upload to DIR instead of pushing")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--commit-message", default=None, help="default: 'Upload <variant> converted from mmseg'")
    parser.add_argument("--token", default=None, help="hub token (default: the logged-in one)")


def run(args: argparse.Namespace) -> int:
    from ..conversion import convert_checkpoint

    with tempfile.TemporaryDirectory(prefix="fastfcn-push-") as scratch:
        target = args.dry_run if args.dry_run is not None else Path(scratch) / "upload"
        folder, variant, _ = convert_checkpoint(  # a ConversionError (ValueError) is reported by the CLI
            args.checkpoint,
            target,
            mmseg_config=args.mmseg_config,
            variant=args.variant,
            drop_training_heads=args.drop_training_heads,
        )
        repo_id = args.repo_id or variant.hub_repo_id
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if args.dry_run is not None:
            print(f"dry run: would upload to {repo_id}: {', '.join(files)}\n  (written to {folder})")
            return 0

        from huggingface_hub import HfApi

        api = HfApi(token=args.token)
        message = (
            args.commit_message or f"Upload {variant.name} converted from mmsegmentation ({variant.mmseg_config})"
        )
        try:
            api.create_repo(repo_id, private=args.private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=message, revision=args.revision
            )
        except Exception as error:  # network, authentication, permissions
            print(f"error: could not push to {repo_id}: {error}\n  Log in with `hf auth login` (or pass --token), "
                  "or check the repository name.", file=sys.stderr)  # fmt: skip
            return 1
        print(f"pushed {', '.join(files)} to {repo_id}: {getattr(commit, 'commit_url', commit)}")
    return 0
