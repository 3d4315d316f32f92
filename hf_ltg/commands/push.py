"""`hf-ltg push`: the doctor, then create the Hub repository and upload the folder."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "push",
        help="check a folder with the doctor and upload it to the Hugging Face Hub",
        description="Run the doctor on FOLDER, then create --repo-id (if needed) and upload every file of FOLDER "
        "with huggingface_hub. The token comes from HF_TOKEN or `hf auth login`. --dry-run prints the files and "
        "uploads nothing. Offline (HF_HUB_OFFLINE=1 or no network) it stops within seconds.",
    )
    parser.add_argument("folder", metavar="FOLDER", help="folder to upload (written by hf-ltg export)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created if needed)")
    parser.add_argument("--commit-message", help="commit message (default: 'Upload NAME with hf-ltg push')")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded, upload nothing")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..cli import CommandError
    from ..hub import push_folder
    from ..hub.push import HubUnreachable

    try:
        push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                    commit_message=args.commit_message, dry_run=args.dry_run)
    except HubUnreachable as error:
        raise CommandError(str(error)) from error
    return 0
