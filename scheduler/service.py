"""The master's gRPC face (``Master`` in proto/scheduler.proto), on the
metad RPC port. It only moves messages: each stream gets a ``Session`` from
the ``master.Master``; a reader thread hands every incoming message to the
master's loop, and the call's generator yields what the master puts in the
session's outbox.

Leadership: on a replica that does not lead (or a stream the master ended
because it stopped leading), the call is aborted with UNAVAILABLE (errno
EAGAIN through ``core.errors``) and the leader's address in the trailing
metadata ``client.LEADER_METADATA_KEY`` (and the details text), so
``client.MasterConnection`` reconnects there.

Threads: a stream holds one gRPC worker (its generator) and one reader
thread for as long as it lives.
"""

from __future__ import annotations

import errno
import json
import logging
import threading

from cistern.core.errors import CisternError, grpc_status_for
from cistern.scheduler.client import LEADER_METADATA_KEY
from cistern.scheduler.proto import scheduler_pb2 as pb
from cistern.scheduler.proto import scheduler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

__all__ = ["MasterService", "add_to_server", "status_pb"]

stream_idle_poll_s = 1.0      # how often an idle stream notices a cancelled call


def _refuse(context, leader: str) -> None:
    """Abort a call on a replica that does not lead (raises)."""
    if leader:
        context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))
    context.abort(grpc_status_for(errno.EAGAIN),
                  f"the scheduler master runs on the metadata leader (leader: {leader or 'unknown'})")


def status_pb(status: dict) -> pb.SchedStatus:
    """The master's status dict as a SchedStatus (the whole dict also as json)."""
    def res(values):
        return pb.Resources(cpus=values[0], mem_bytes=values[1], disk_bytes=values[2])
    return pb.SchedStatus(
        tasks_by_state=status["tasks_by_state"],
        agents=[pb.AgentInfo(agent_id=a["agent_id"], node_id=a["node_id"], address=a["address"], state=a["state"],
                             total=res(a["total"]), used=res(a["used"]), tasks=a["tasks"],
                             connected=a["connected"]) for a in status["agents"]],
        frameworks=[pb.FrameworkInfo(framework_id=f["framework_id"], name=f["name"], connected=f["connected"],
                                     tasks=f["tasks"], failover_timeout_s=f["failover_timeout_s"])
                    for f in status["frameworks"]],
        offers_outstanding=status["offers_outstanding"],
        json=json.dumps(status, sort_keys=True))


class MasterService(pb_grpc.MasterServicer):
    def __init__(self, master):
        self._master = master

    def _stream(self, kind: str, request_iterator, context, deliver):
        session = self._master.open_session(kind, context.peer())
        if session is None:
            _refuse(context, self._master.leader_address())

        def read():
            try:
                for message in request_iterator:
                    deliver(session, message)
            except Exception as e:   # a cancelled or broken call ends the iterator this way
                if context.is_active():
                    log.debug("%s stream reader stopped: %s", kind, e)
            finally:
                self._master.session_ended(session)

        context.add_callback(lambda: session.close())
        threading.Thread(target=read, name=f"sched-{kind}-reader", daemon=True).start()
        yield from session.messages(context.is_active, stream_idle_poll_s)
        if session.leader_hint is not None and context.is_active():
            _refuse(context, session.leader_hint)

    def AgentStream(self, request_iterator, context):
        yield from self._stream("agent", request_iterator, context, self._master.agent_message)

    def FrameworkStream(self, request_iterator, context):
        yield from self._stream("framework", request_iterator, context, self._master.framework_call)

    def Status(self, request, context):
        if not self._master.leading:
            _refuse(context, self._master.leader_address())
        try:
            return status_pb(self._master.status())
        except CisternError as e:
            if e.errno == errno.EAGAIN:
                _refuse(context, self._master.leader_address())
            context.abort(grpc_status_for(e.errno), e.message)


def add_to_server(master, grpc_server) -> MasterService:
    service = MasterService(master)
    pb_grpc.add_MasterServicer_to_server(service, grpc_server)
    return service


class SchedulerExtension:
    """Hosts the scheduler in a metad (``MetaServer(..., extensions=[...])``,
    wired by cli/meta.py): registers ``SchedState`` on the replica's log and
    serves the ``Master`` service beside the metadata service. ``conf``:
    a ``master.MasterConf`` (default: from ``CISTERN_SCHED_*`` variables)."""

    def __init__(self, conf=None):
        self.conf = conf
        self.master = None
        self.state = None

    def machines(self, store):
        from cistern.scheduler.state import SchedState

        self.state = SchedState(store)
        return [(self.state.code_range, self.state)]

    def attach(self, grpc_server, replica, registry) -> None:
        from cistern.scheduler.master import Master, MasterConf

        self.master = Master(replica, conf=self.conf or MasterConf.from_env(), registry=registry)
        add_to_server(self.master, grpc_server)
        self.master.start()

    def stop(self) -> None:
        if self.master is not None:
            self.master.stop()
            self.master = None
