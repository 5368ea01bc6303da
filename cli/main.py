"""The `podlink` command: one click group, one function per command (in pods.py, aid.py,
export.py, demo.py). Each command's docstring, with its example, is its --help."""

from __future__ import annotations

import click

from podlink.cli import aid, demo, directory, export, handoff, hours, organizers, pods
from podlink.cli.session import OrderedGroup


@click.group(cls=OrderedGroup, context_settings={"max_content_width": 90})
@click.version_option(package_name="podlink", prog_name="podlink")
def main() -> None:
    """podlink: needs, offers and help between neighbours, recorded by your pod's node and
    shared with nearby pods only as far as you say.

    \b
    Start here:
      podlink demo                         # three pods on this machine, one story
      podlink init --name "Maple Street"   # your own pod
      podlink serve                        # its node (keep it running)

    Every command takes --home DIR (default $PODLINK_HOME, else your user data folder).
    """


# The order of --help: the order in which a pod meets them.
for command in (
    demo.demo, pods.init, pods.serve, pods.status,
    aid.member, aid.request, aid.offer, aid.claim, aid.accept, aid.decline,
    handoff.handoff, handoff.inbox, aid.fulfil, hours.hours,
    aid.match, aid.resource, organizers.organizer, directory.pod_group,
    pods.invite, pods.peer, pods.sync, pods.log,
    export.export, pods.backup, pods.restore,
):  # fmt: skip
    main.add_command(command)
