"""Registry commands: tags, search, login, logout; and the registry options every network
command takes (``pull`` shares them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidReference
from ..oci.reference import Reference
from ..store.store import Store
from . import EXIT_OK
from .format import print_json

if TYPE_CHECKING:
    from ..sources.registry import RegistryOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tags",
        help="list the tags of a repository in a registry",
        description=(
            "List the tags of a repository in a registry (all pages of its tags/list), "
            "with credentials from the auth files or --creds."
        ),
    )
    p.add_argument(
        "reference",
        metavar="REF",
        help="e.g. registry.example:5000/app; a short name is resolved as 'pull' resolves it",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    registry_arguments(p)
    p.set_defaults(handler=cmd_tags)

    p = sub.add_parser(
        "search",
        help="list a registry's repositories (its catalog)",
        description=(
            "List the repositories in a registry's catalog whose names contain TERM, "
            "as names 'pull' takes."
        ),
    )
    p.add_argument("registry", metavar="REGISTRY")
    p.add_argument("term", metavar="TERM", nargs="?", default="", help="substring to match")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    registry_arguments(p)
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser(
        "login",
        help="check and store credentials for a registry",
        description=(
            "Verify USER/PASSWORD against REGISTRY and store them (mode 0600) in the auth file "
            "podman uses: $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json."
        ),
    )
    p.add_argument("registry", metavar="REGISTRY")
    p.add_argument("-u", "--username", required=True)
    p.add_argument("-p", "--password", help="the password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    registry_arguments(p, creds=False)
    p.set_defaults(handler=cmd_login)

    p = sub.add_parser(
        "logout",
        help="remove stored credentials for a registry",
        description="Remove the credentials 'login' stored for REGISTRY from the auth file.",
    )
    p.add_argument("registry", metavar="REGISTRY")
    registry_arguments(p, creds=False)
    p.set_defaults(handler=cmd_logout)


def registry_arguments(p: argparse.ArgumentParser, *, creds: bool = True) -> None:
    g = p.add_argument_group("registry options (docker:// sources)")
    if creds:
        g.add_argument("--creds", metavar="USER:PASS", help="credentials for the registry")
    g.add_argument(
        "--authfile",
        type=Path,
        help="auth file (podman auth.json or docker config.json, whose credHelpers and "
        "credsStore are asked)",
    )
    g.add_argument(
        "--tls-verify",
        default="true",
        choices=["true", "false"],
        help="verify TLS; false also allows plain HTTP (loopback registries always may)",
    )
    g.add_argument("--insecure", action="store_true", help="same as --tls-verify=false")
    g.add_argument("--cert-dir", type=Path, help="directory of CA certificates (*.crt)")
    g.add_argument(
        "--registries-conf",
        type=Path,
        metavar="FILE",
        help="containers-registries.conf(5) to read instead of $CONTAINERS_REGISTRIES_CONF, "
        "~/.config/containers/registries.conf or /etc/containers/registries.conf (the "
        "registries.conf.d drop-ins are read too): [[registry]] prefix, location, insecure, "
        "blocked and mirrors (pull-from-mirror), unqualified-search-registries, "
        "short-name-mode and [aliases]",
    )


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    """The options of a network command, registries.conf read (no network yet)."""
    from ..sources.registries_conf import conf_paths, load
    from ..sources.registry import RegistryOptions  # noqa: F811

    creds = None
    text = getattr(args, "creds", None)
    if text:
        user, sep, password = text.partition(":")
        if not sep or not user:
            raise InvalidReference("--creds: expected USER:PASSWORD")
        creds = (user, password)
    return RegistryOptions(
        insecure=args.insecure or args.tls_verify == "false",
        cert_dir=args.cert_dir,
        creds=creds,
        auth_file=args.authfile,
        registries=load(conf_paths(getattr(args, "registries_conf", None))),
    )


def ask_short_name(text: str, options: RegistryOptions) -> str:
    """SOURCE, or ``docker://CHOICE`` when SOURCE is a short name registries.conf makes
    ambiguous and both stdin and stdout are terminals: as podman does in the enforcing and
    permissive modes, the user picks one of the unqualified-search registries (stderr and
    stdin; nothing is recorded in short-name-aliases.conf)."""
    from ..sources.registries_conf import is_short_name
    from ..sources.transports import TRANSPORTS

    conf = options.registries
    if conf is None or text.partition(":")[0] in TRANSPORTS or not is_short_name(text):
        return text
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return text
    resolution = conf.resolve_short_name(text, terminal=True)
    if not resolution.ask:
        return text
    choices = resolution.candidates
    print(f"{text!r} is a short name; unqualified-search-registries in", file=sys.stderr)
    print(f"{resolution.origin} give {len(choices)} images:", file=sys.stderr)
    for n, ref in enumerate(choices, 1):
        print(f"  {n}) {ref}", file=sys.stderr)
    while True:
        print(f"pull which one [1-{len(choices)}]? ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline()
        if not answer:  # end of input: nothing chosen
            raise InvalidReference(f"short name {text!r}: no image was chosen")
        answer = answer.strip()
        if answer.isdigit() and 1 <= int(answer) <= len(choices):
            return f"docker://{choices[int(answer) - 1]}"


def cmd_tags(store: Store, args: argparse.Namespace) -> int:
    from ..errors import SnapshotterError, reworded
    from ..sources.registry import RegistryClient

    options = registry_options(args)
    given = ask_short_name(args.reference, options)
    text = given.removeprefix("docker://")
    if options.registries is None or given.startswith("docker://"):
        candidates: tuple[Reference, ...] = (Reference.parse(text),)
    else:  # a short name means what it means to pull (registries.conf's aliases, search)
        candidates = options.registries.resolve_short_name(text).candidates
    failures: list[SnapshotterError] = []
    with RegistryClient(options) as client:
        for ref in candidates:
            try:
                tags = client.tags(ref)
                break
            except SnapshotterError as exc:
                failures.append(exc)
        else:
            if len(failures) == 1:
                raise failures[0]
            also = "; ".join(str(f) for f in failures)
            raise reworded(failures[-1], f"{text}: every candidate failed: {also}")
    if args.json:
        print_json(tags)
    else:
        for tag in tags:
            print(tag)
    return EXIT_OK


def cmd_search(store: Store, args: argparse.Namespace) -> int:
    from ..sources.registry import RegistryClient, normalize_registry

    with RegistryClient(registry_options(args)) as client:
        names = client.catalog(args.registry, args.term)
    host = normalize_registry(args.registry)
    if args.json:
        print_json(names)
    else:
        for name in names:
            print(f"{host}/{name}")
    return EXIT_OK


def cmd_login(store: Store, args: argparse.Namespace) -> int:
    from ..sources.registry import login

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif args.password is not None:
        password = args.password
    else:
        import getpass

        password = getpass.getpass(f"password for {args.username}@{args.registry}: ")
    path = login(args.registry, args.username, password, registry_options(args))
    print(f"Login succeeded; credentials stored in {path}", file=sys.stderr)
    return EXIT_OK


def cmd_logout(store: Store, args: argparse.Namespace) -> int:
    from ..sources.registry import logout

    path = logout(args.registry, registry_options(args))
    print(f"Removed login credentials for {args.registry} from {path}", file=sys.stderr)
    return EXIT_OK
