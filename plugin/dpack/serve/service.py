"""``dpack serve``: the live scorer between Zeek and the verdict sinks.

The ``Service`` holds what exists once: the link to Zeek (``zeek.link``), the outbox of verdicts waiting
for it, refusals said once per topic and reason, the rule writer, the metrics endpoint and summary line,
and the watch that reloads the model and config files. Scoring is a backend it holds: the ``Pipeline``
in this process (``serve.workers: 0``), or a ``WorkerPool`` of scoring processes, each running the same
pipeline (``workers.py``). The service is the in-process pipeline's ``Output``.

Verdicts that cannot be sent while Zeek is away wait in a bounded outbox and go out after reconnecting.
On SIGTERM what is queued is scored and sent before the link closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import Config, load_config
from ..errors import CodecError, DpackError, ModelError, one_line
from ..fileio import sha256_file
from ..prefix.modelfile import LoadedModel, load_model
from ..verdict import Verdict
from ..zeek.codec import encode_refusal, encode_status
from ..zeek.link import BrokerLink, Link, WebSocketLink
from ..zeek.wire import Event
from .learning import Learner
from .metrics import Metrics, RateLimitedLog, serve_metrics
from .pipeline import Pipeline, valid_topic

log = logging.getLogger(__name__)

AnomalyHook = Callable[[Sequence[Verdict], Sequence[str]], None]


REFUSALS_REMEMBERED = 1024
_CHANGES = ("modified", "created", "moved", "closed")  # watchdog event types that may change a file


def _digest(path: str) -> str | None:
    """The SHA-256 of a file's content; None when it cannot be read (it is being replaced)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


class Scoring(Protocol):
    """What the service scores with: ``InProcess`` or ``workers.WorkerPool``."""

    async def start(self) -> None: ...
    async def on_message(self, raw: Any, received: float) -> None: ...
    def use_model(self, model: LoadedModel) -> None: ...
    def apply_config(self, new: Config) -> None: ...
    async def run(self) -> None:
        """Score until told to stop, then finish what is queued."""

    def stop(self) -> None: ...
    def close(self) -> None: ...


class InProcess:
    """``serve.workers: 0``: the pipeline on this process's event loop, its output the service."""

    def __init__(self, service: Service) -> None:
        self.pipeline = Pipeline(service.cfg, service.model, service, service.metrics, service.ratelog)

    async def start(self) -> None:
        pass

    async def on_message(self, raw: Any, received: float) -> None:
        await self.pipeline.on_message(raw, received)

    def use_model(self, model: LoadedModel) -> None:
        self.pipeline.use_model(model)

    def apply_config(self, new: Config) -> None:
        self.pipeline.apply_config(new)

    async def run(self) -> None:
        await self.pipeline.run()

    def stop(self) -> None:
        self.pipeline.stop.set()
        self.pipeline.wakeup.set()

    def close(self) -> None:
        pass


class Service:
    """One running ``dpack serve``."""

    def __init__(
        self,
        cfg: Config,
        link: Link | None = None,
        hooks: Sequence[AnomalyHook] = (),
        model: LoadedModel | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.ratelog = RateLimitedLog()
        self.model = model if model is not None else self._load_model(cfg)
        self.hooks = list(hooks)
        self.rules_worker = self._rules_worker(cfg)
        self.failure = ""  # set when serve stops because a part of it stopped (health); exit status 1
        self.learner: Learner | None = None
        if self.rules_worker is not None:
            self.hooks.append(self.rules_worker)
            rules = self.rules_worker
            self.metrics.extra = rules.figures
        if cfg.learn.enabled:
            self.learner = Learner(cfg.learn, self.model.spec, cfg.detectors.context)
            extra = self.metrics.extra
            learner = self.learner
            self.metrics.extra = lambda: {**extra(), **learner.figures()}
        self.outbox: deque[str] = deque()
        self.outbox_verdicts: deque[int] = deque()  # verdicts per outbox message
        # (topic, reason) pairs told to Zeek since it connected; bounded, since reasons name nodes
        self.refusals_sent: OrderedDict[tuple[str, str], None] = OrderedDict()
        if link is None:
            z = cfg.zeek
            link = (
                BrokerLink(z.url, z.topic, z.reconnect_max, self._on_link)
                if z.transport == "broker"
                else WebSocketLink(z.url, z.topic, z.reconnect_max, self._on_link, z.keepalive)
            )
        self.link: Link = link
        self.stop = asyncio.Event()  # set by SIGTERM: stop taking samples, drain, then close the link
        self.link_stop = asyncio.Event()
        self.link_up = asyncio.Event()  # set when Zeek (re)connects: the outbox goes out
        self.reload_requested: set[str] = set()
        # the content last seen of each watched file (the files loaded at start, then each change)
        self.seen = {"model": _digest(self.model.path), "config": _digest(cfg.path) if cfg.path else None}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.flush_lock = asyncio.Lock()  # one outbox flush at a time (else a message could go out twice)
        self.scoring: Scoring
        if cfg.serve.workers:
            from .workers import WorkerPool

            self.scoring = WorkerPool(self, cfg.serve.workers)
        else:
            self.scoring = InProcess(self)
        self._set_learner(self.learner)

    @staticmethod
    def _rules_worker(cfg: Config) -> Any:
        """Suricata rules for anomalous verdicts, when ``rules.file`` is configured."""
        if not cfg.rules.get("file"):
            return None
        from ..sinks.rules import RulesWorker, book_from_config
        from ..sinks.suricata import SuricataSocket

        book = book_from_config(cfg)
        sock = SuricataSocket(cfg.rules_setting("socket")) if cfg.rules.get("socket") else None
        return RulesWorker(book, sock, tick=cfg.rules_setting("tick"))

    # --- the pipeline's output (in-process; a pool hands its workers' results to these too) ----------------

    def post(self, text: str, n: int) -> None:
        self.outbox.append(text)
        self.outbox_verdicts.append(n)
        while sum(self.outbox_verdicts) > self.cfg.serve.outbox_size and len(self.outbox) > 1:
            self.outbox.popleft()
            lost = self.outbox_verdicts.popleft()
            self.metrics.inc("verdicts_dropped", lost)
            self.ratelog(logging.ERROR, "outbox", "Zeek away too long: %d verdict(s) not delivered", lost)
        self.metrics.outbox_depth = sum(self.outbox_verdicts)

    async def flush(self) -> None:
        async with self.flush_lock:  # two flushes sending outbox[0] while one awaits would send it twice
            while self.outbox and self.link.connected:
                if not await self.link.send(self.outbox[0]):
                    break
                self.outbox.popleft()
                self.metrics.inc("verdicts_sent", self.outbox_verdicts.popleft())
            self.metrics.outbox_depth = sum(self.outbox_verdicts)

    async def refuse(self, topic: str, reason: str) -> None:
        """Tell Zeek why its batches are refused: once per topic and reason while connected."""
        key = (topic, reason)
        if key not in self.refusals_sent and valid_topic(topic):
            self.refusals_sent[key] = None
            if len(self.refusals_sent) > REFUSALS_REMEMBERED:
                self.refusals_sent.popitem(last=False)
            await self.link.send(encode_refusal(topic, reason))

    async def status(self, topic: str, kind: str, msg: str) -> None:
        """A scorer condition for Zeek (``DPack::scorer_status``), sent now; the guard's gauge."""
        if kind == "guard_on":
            self.metrics.guard_active += 1
        elif kind == "guard_off":
            self.metrics.guard_active = max(0, self.metrics.guard_active - 1)
        if valid_topic(topic):
            await self.link.send(encode_status(topic, kind, one_line(msg, 1000)))

    def flagged(self, verdicts: Sequence[Verdict], nodes: Sequence[str]) -> None:
        """Anomalous verdicts to the anomaly hooks (the rule writer); a failing hook is counted, logged."""
        for hook in self.hooks:
            try:
                hook(verdicts, nodes)
            except Exception:
                self.metrics.inc("hook_errors")
                log.exception("anomaly hook %r failed", hook)

    def report(self) -> None:
        pass

    # --- the link ------------------------------------------------------------------------------------------

    def _on_link(self, up: bool) -> None:
        self.metrics.connected = int(up)
        if up:
            self.metrics.inc("reconnects")
            self.refusals_sent.clear()  # Zeek is back: it may need to hear a refusal again
            self.link_up.set()

    async def on_message(self, raw: str | bytes | Event | CodecError, received: float | None = None) -> None:
        """One message from the link (WebSocket text, or a Broker ``Event`` / the ``CodecError`` that
        converting it raised); ``received``: when it arrived (monotonic clock; default now)."""
        await self.scoring.on_message(raw, time.monotonic() if received is None else received)

    async def _flush_on_reconnect(self) -> None:
        """Send what waited in the outbox whenever Zeek comes back."""
        while not self.stop.is_set():
            await self.link_up.wait()
            self.link_up.clear()
            before = -1
            while self.outbox and self.link.connected and len(self.outbox) != before:
                before = len(self.outbox)
                await self.flush()

    # --- models and configs ----------------------------------------------------------------------------------

    @staticmethod
    def _load_model(cfg: Config) -> LoadedModel:
        expect = cfg.export.spec() if cfg.export is not None else None
        return load_model(cfg.model_path(), expect=expect)

    def reload_model(self) -> bool:
        """Swap in the model file at the configured path; a bad file is refused and the old one kept."""
        try:
            model = self._load_model(self.cfg)
        except ModelError as err:
            self.metrics.inc("model_reload_failures")
            log.error("new model refused, still serving %s: %s", self.model.name, err)
            return False
        self.seen["model"] = model.sha256
        if model.sha256 == self.model.sha256:
            return False
        if model.spec != self.model.spec:
            log.warning(
                "new model %s reads %s, the old one read %s; Zeek's export must match it",
                model.name,
                model.spec,
                self.model.spec,
            )
        self.use_model(model)
        self.metrics.inc("model_reloads")
        log.info("now serving model %s (threshold %.6g)", model.name, model.threshold)
        return True

    def use_model(self, model: LoadedModel) -> None:
        """Score the next batches with ``model`` (checked already), in every scoring process."""
        self.model = model
        self.scoring.use_model(model)

    def reload_config(self) -> None:
        if not self.cfg.path:
            return
        try:
            new = load_config(self.cfg.path)
        except DpackError as err:
            self.metrics.inc("config_reload_failures")
            log.error("changed config refused, keeping the running one: %s", err)
            return
        model_changed = new.model_path() != self.cfg.model_path()
        self.apply_config(new)
        self.metrics.inc("config_reloads")
        log.info("config reloaded from %s", self.cfg.path)
        if model_changed:
            self.reload_model()

    def apply_config(self, new: Config) -> None:
        """What can change while serving: scoring and batching settings and the model path; the link, the
        queues, the workers and the outputs keep their start-up settings until a restart."""
        self.scoring.apply_config(new)  # (in-process, the pipeline's config is this one: same object)
        self.cfg.scoring, self.cfg.export = new.scoring, new.export
        self.cfg.serve.batch_size, self.cfg.serve.max_delay_ms = new.serve.batch_size, new.serve.max_delay_ms
        self.cfg.model = new.model

    # --- housekeeping -------------------------------------------------------------------------------------

    async def _log_loop(self) -> None:
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=self.cfg.serve.log_interval)
            except TimeoutError:
                log.info("%s", self.metrics.summary())

    def health(self, observer: Any = None) -> str:
        """Why the service cannot go on, or "": a part that should run for as long as it serves (the rule
        writer thread, the file watcher) has stopped. Each survives a failure of one item by itself;
        this catches what it could not survive, so that serve never runs half-alive."""
        rw = self.rules_worker
        if rw is not None and not rw.thread.is_alive():
            return f"the rule writer stopped ({rw.failed or 'no error recorded'}); no rule would be written"
        if observer is not None and not observer.is_alive():
            return "the file watcher stopped; model and config changes would go unseen"
        return ""

    def _learning(self) -> None:
        """Learning mode: once the background training passed, swap the learned model in (the Zeek
        connection stays) and stop marking verdicts as learning; a refusal keeps them marked."""
        if self.learner is None or self.learner.state in ("done", "refused"):
            return
        path = self.learner.poll()
        if path is None:
            return
        try:
            model = load_model(path, expect=self.cfg.export.spec() if self.cfg.export is not None else None)
        except ModelError as err:
            self.learner.refuse(f"the learned model does not load: {err}")
            return
        self.use_model(model)
        self.metrics.inc("model_reloads")
        self._set_learner(None)
        self.learner.swapped()
        log.info(
            "learning done: now detecting with %s; to keep it across restarts set model: %s and learn.enabled: false",
            model.name,
            path,
        )

    def _set_learner(self, learner: Learner | None) -> None:
        pipeline = getattr(self.scoring, "pipeline", None)
        if pipeline is not None:
            pipeline.learner = learner

    async def _health_loop(self, observer: Any) -> None:
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=1.0)
            except TimeoutError:
                self._learning()
                why = self.health(observer)
                if why:
                    self.failure = why
                    log.critical("stopping: %s; restart dpack serve", why)
                    self.stop.set()

    def _watch(self) -> Any:
        """Watch the model file and the config file; reloads run on the event loop, debounced."""
        if not self.cfg.serve.watch:
            return None
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        targets = {os.path.realpath(self.model.path): "model"}
        if self.cfg.path:
            targets[os.path.realpath(self.cfg.path)] = "config"
        assert self.loop is not None
        call_soon = self.loop.call_soon_threadsafe
        service = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                # Only what can change a file's content: reading it (as a reload does) raises opened
                # and closed_no_write events, and reacting to those reloaded again and again.
                if event.event_type not in _CHANGES:
                    return
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    kind = targets.get(os.path.realpath(str(p))) if p else None
                    if kind:
                        call_soon(service._request_reload, kind)

        obs = Observer()
        for d in {str(Path(t).parent) for t in targets}:
            obs.schedule(Handler(), d, recursive=False)
        obs.daemon = True
        obs.start()
        return obs

    def _request_reload(self, kind: str) -> None:
        if not self.reload_requested:
            assert self.loop is not None
            self.loop.call_later(0.3, self._do_reloads)  # debounce: editors write in several steps
        self.reload_requested.add(kind)

    def _do_reloads(self) -> None:
        """Reload what changed: a file whose content is what was last seen (an editor's save of the same
        bytes, a touch) is left alone, and a bad file is refused once, not at every event it causes."""
        kinds, self.reload_requested = self.reload_requested, set()
        if "config" in kinds and self.cfg.path and self._changed("config", self.cfg.path):
            self.reload_config()
        if "model" in kinds and self._changed("model", self.cfg.model_path()):
            self.reload_model()

    def _changed(self, kind: str, path: str) -> bool:
        digest = _digest(path)
        if digest is None or digest == self.seen.get(kind):
            return False
        self.seen[kind] = digest
        return True

    async def run(self) -> None:
        """Serve until ``self.stop`` is set; then score and send what is queued, and return."""
        self.loop = asyncio.get_running_loop()
        # Threads that remain (connection-summary scoring, the file watcher) share the GIL with the event
        # loop; the default 5 ms hand-over interval could add up to 5 ms to a verdict. 0.5 ms does not.
        sys.setswitchinterval(0.0005)
        # One torch thread: the other core belongs to the receiving loop (and, on a sensor, to Zeek);
        # two threads measured slower here (bench_live: 9.5-9.8k -> 10.6-12.4k flows/s sustained with
        # this and the freeze below). Freezing what start-up allocated (torch, the model) keeps the
        # garbage collector's full passes from walking it every few hundred batches.
        torch.set_num_threads(1)
        gc.collect()
        gc.freeze()
        metrics_server = None
        if self.cfg.serve.metrics_port:
            metrics_server = await serve_metrics(
                self.metrics, self.cfg.serve.metrics_address, self.cfg.serve.metrics_port
            )
        await self.scoring.start()  # before the watcher's thread and the link: workers start clean
        observer = self._watch()
        where = (
            f"{self.cfg.serve.workers} scoring workers"
            if self.cfg.serve.workers
            else "scoring in this process"
        )
        log.info(
            "serving model %s (%s; learned from %s; %s); Zeek at %s",
            self.model.name,
            self.model.spec.describe(),
            self.model.learned_from,
            where,
            self.link.url,
        )
        link_task = asyncio.create_task(self.link.run(self.on_message, self.link_stop))
        log_task = asyncio.create_task(self._log_loop())
        health_task = asyncio.create_task(self._health_loop(observer))
        flush_task = asyncio.create_task(self._flush_on_reconnect())
        score_task = asyncio.create_task(self.scoring.run())
        stopper = asyncio.create_task(self.stop.wait())
        try:
            done, _ = await asyncio.wait(
                {link_task, score_task, stopper}, return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            # stopping: the scorer drains the queue and the outbox while the link is still up
            self.scoring.stop()
            await asyncio.wait_for(score_task, timeout=30)
            await self.flush()
            if self.outbox:
                lost = sum(self.outbox_verdicts)
                self.metrics.inc("verdicts_dropped", lost)
                log.error(
                    "stopping while Zeek is away: %d verdict(s) not delivered (they are in the SIEM feed)",
                    lost,
                )
        finally:
            self.stop.set()
            self.scoring.stop()
            self.link_stop.set()
            self.link_up.set()
            try:
                await asyncio.wait_for(asyncio.shield(link_task), timeout=5)  # closes with code 1000
            except (TimeoutError, Exception):  # noqa: BLE001 - shutting down; the link reports its own errors
                pass
            tasks = (link_task, log_task, health_task, flush_task, score_task, stopper)
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if metrics_server is not None:
                metrics_server.close()
            if observer is not None:
                observer.stop()
            self.scoring.close()
            if self.rules_worker is not None:
                self.rules_worker.close()
            log.info("stopped: %s", self.metrics.summary())
