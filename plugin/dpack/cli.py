"""The ``dpack`` command: train, score, evaluate. Errors end with one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import DpackError, one_line
from .fileio import check_output
from .traffic.encode import DEFAULT_BYTES, DEFAULT_PACKETS, DEFAULT_POLICY, POLICIES

log = logging.getLogger("dpack")


def _log_progress(msg: str) -> None:
    log.info("%s", msg)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model file (default: the shipped models/dpack-default.pt)")
    p.add_argument("--config", help="YAML configuration file")


def _bounded(lo: int, hi: int) -> Any:
    """An argparse type: an integer in [lo, hi] (argparse says the error in one line)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {one_line(text, 40)!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range ({lo}-{hi})")
        return v

    return parse


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, when it has one worth showing and the text does not
    already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if (
            action.option_strings
            and d not in (None, False, argparse.SUPPRESS, [], "")
            and "default" not in text
        ):
            text += f" (default: {d})"
        return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dpack", description="Early detection of malicious flows (D-PACK).")
    ap.add_argument("--version", action="version", version=f"dpack {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model on benign captures")
    t.add_argument("captures", nargs="+", help="benign pcap/pcapng files (gzip allowed)")
    t.add_argument("--out", required=True, help="model file to write")
    t.add_argument(
        "--detector",
        choices=("prefix", "records", "classifier"),
        default="prefix",
        help="prefix: D-PACK on first packets (default); records: flow-record autoencoder on benign "
        "captures; classifier: CNN-BiLSTM on labelled captures (NAME.labels.csv beside each)",
    )
    t.add_argument("--no-segments", action="store_true", help="records/classifier: no segment features")
    t.add_argument(
        "--cmd-target",
        nargs="*",
        default=[],
        help="records: unlabeled deployment captures for the CMD penalty",
    )
    t.add_argument("--cmd-weight", type=float, default=0.0, help="records: CMD penalty weight (0 = off)")
    t.add_argument("--epochs", type=int, help="records/classifier: maximum epochs (early stopping)")
    t.add_argument(
        "--arch", choices=("paper", "fast"), default="fast",
        help="paper: the article's network (1024-wide profile); fast: a narrower one, the shipped model's",
    )  # fmt: skip
    t.add_argument(
        "--packets",
        type=int,
        default=DEFAULT_PACKETS,
        help=f"N, packets per flow (default {DEFAULT_PACKETS})",
    )
    t.add_argument(
        "--bytes",
        type=int,
        default=DEFAULT_BYTES,
        help=f"L, bytes per packet from the IP header (default {DEFAULT_BYTES})",
    )
    t.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY, help="prefix policy")
    t.add_argument("--val-fraction", type=float, default=0.2, help="benign flows kept for calibration")
    t.add_argument(
        "--target-fpr",
        type=float,
        help="target false positive rate (default 0.01; with --validate, learning mode's learn.target_fpr, 0.005)",
    )
    t.add_argument(
        "--threshold",
        choices=("quantile", "sigma"),
        help="quantile: (1-target FPR) quantile; sigma: mean + k*std of calibration scores "
        "(default: quantile for prefix, sigma for records)",
    )
    t.add_argument("--sigma-k", type=float, default=3.0, help="k of --threshold sigma")
    t.add_argument("--cnn-epochs", type=int, default=8, help="epochs of the CNN profiler")
    t.add_argument("--ae-epochs", type=int, default=40, help="epochs of the autoencoder")
    t.add_argument("--seed", type=int, default=1, help="random seed (the same data and seed: the same model)")
    t.add_argument("--name", default="", help="model name recorded in the file and in verdicts")
    t.add_argument(
        "--validate",
        action="store_true",
        help="prefix: learn a site as dpack serve's learning mode does, from one capture of it (the last "
        "20%% by time held back, the host-context stage too, refused with its reason if it does not "
        "pass; the learning report beside the model)",
    )
    t.add_argument("--site", default="", help="with --validate: the site's name, for the provenance")
    t.add_argument(
        "--max-fpr", type=float, default=0.01, help="with --validate: held-back FPR above it is refused"
    )

    s = sub.add_parser("score", help="score every flow of a capture")
    s.add_argument("capture", help="pcap/pcapng file (gzip allowed)")
    _add_model_args(s)
    s.add_argument("--verdicts", help="write one JSON line per flow here ('-' for stdout)")
    s.add_argument("--explain", choices=("anomalous", "all", "none"), help="which verdicts get explanations")
    s.add_argument(
        "--top", type=_bounded(0, 10_000), default=10, help="flagged flows shown in the summary (default 10)"
    )
    s.add_argument(
        "--workers",
        type=_bounded(0, 64),
        help="processes, 0-64 (default: config scoring.workers, 0 = per core)",
    )
    s.add_argument(
        "--rules", help="write Suricata rules for the flagged flows here (policy: config 'rules:')"
    )

    s.add_argument("--no-context", action="store_true", help="the prefix model alone (no host-context stage)")

    tc = sub.add_parser("train-context", help="fit a model's host-context stage on benign captures")
    tc.add_argument("captures", nargs="+", help="benign pcap/pcapng files (gzip allowed), in time order")
    _add_model_args(tc)
    tc.add_argument("--out", required=True, help="model file to write (the model with its context stage)")
    tc.add_argument("--target-fpr", type=float, default=0.005, help="false-positive rate (default 0.005)")
    tc.add_argument("--held-back", type=float, default=0.2, help="last part kept for the threshold (0.2)")
    tc.add_argument("--prefix-v4", type=int, default=32, help="IPv4 host key length (default 32)")
    tc.add_argument("--prefix-v6", type=int, default=64, help="IPv6 host key length (default 64)")
    tc.add_argument(
        "--workers", type=_bounded(0, 64), help="processes, 0-64 (default: config scoring.workers)"
    )

    v = sub.add_parser("serve", help="score flows exported by Zeek, live")
    _add_model_args(v)
    v.add_argument("--url", help="Zeek WebSocket URL (default ws://127.0.0.1:27759/v1/messages/json)")
    v.add_argument("--topic", help="sample topic (prefix) to subscribe to (default dpack/samples)")
    v.add_argument("--alerts", help="SIEM feed, ECS JSON lines ('' for none; default dpack-alerts.jsonl)")
    v.add_argument(
        "--metrics-port", type=int, help="Prometheus endpoint on 127.0.0.1 (0 for none; default 9477)"
    )

    e = sub.add_parser(
        "explain", help="an explanation token in words (p2.tcp.flags, p3.absent, host.new_flows_10s)"
    )
    e.add_argument("tokens", nargs="+", help="tokens as verdicts name them")

    r = sub.add_parser("rules", help="inspect and change the active Suricata rules")
    r.add_argument("--config", help="YAML configuration file (rules.file, rules.state)")
    r.add_argument("--file", help="rules file (default: rules.file, or suricata_rules/dpack.rules)")
    rsub = r.add_subparsers(dest="rules_cmd", required=True)
    rsub.add_parser("list", help="active entries")
    show = rsub.add_parser("show", help="one rule by SID")
    show.add_argument("sid", type=int, help="the rule's signature id")
    rsub.add_parser("expire", help="drop entries past their expiry and rewrite the file")
    rm = rsub.add_parser("remove", help="remove the entries for an address and rewrite the file")
    rm.add_argument("address", help="the blocked source address (or a flow rule's key)")

    e = sub.add_parser("evaluate", help="detection metrics on labelled captures")
    _add_model_args(e)
    e.add_argument("--benign", nargs="+", default=[], help="benign captures")
    e.add_argument("--attack", nargs="+", default=[], help="attack captures")
    e.add_argument("--pcap", help="one capture with benign and attack flows (with --labels)")
    e.add_argument("--labels", help="labels CSV (lab-dev format) for --pcap")
    e.add_argument("--report", help="directory for ROC/PR/histogram plots and index.html")
    e.add_argument("--json", help="write the metrics as JSON here")
    e.add_argument("--records-model", help="also a flow-record autoencoder: per family, side by side")

    c = sub.add_parser("crossval", help="k-fold reproductions of the flow-record classifiers")
    c.add_argument(
        "--dataset", required=True, help="nsl-kdd or unsw-nb15 folder or table, or a lab-dev folder"
    )
    c.add_argument(
        "--task",
        choices=("binary", "multiclass"),
        default="binary",
        help="benign/attack, or the attack family",
    )
    c.add_argument("--folds", type=int, default=5, help="K of stratified k-fold (default 5)")
    c.add_argument("--models", default="cnn_bilstm,logreg,random_forest", help="comma-separated")
    c.add_argument(
        "--split",
        choices=("random", "group"),
        default="random",
        help="random: stratified k-fold; group: source/target /24 pairs stay on one side",
    )
    c.add_argument("--epochs", type=int, default=8, help="CNN-BiLSTM epochs (early stopping, patience 2)")
    c.add_argument("--seed", type=int, default=1, help="random seed")
    c.add_argument("--json", help="write model name -> mean metrics as JSON here")
    c.add_argument("--test", help="instead of k-fold: train on --dataset, score this table (e.g. KDDTest+)")
    for p in [*sub.choices.values(), *rsub.choices.values()]:
        p.formatter_class = DefaultsFormatter
    return ap


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from .config import load_config
    from .serve.service import Service

    zeek = {k: v for k, v in (("url", args.url), ("topic", args.topic)) if v is not None}
    serve = {k: v for k, v in (("alerts", args.alerts), ("metrics_port", args.metrics_port)) if v is not None}
    overrides: dict[str, Any] = {"zeek": zeek, "serve": serve}
    if args.model:
        overrides["model"] = args.model
    cfg = load_config(args.config, overrides=overrides)
    if not args.verbose:
        logging.getLogger("dpack").setLevel(logging.INFO)

    async def main() -> int:
        service = Service(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop.set)
        await service.run()
        return 1 if service.failure else 0

    return asyncio.run(main())


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from .config import load_config
    from .prefix.modelfile import load_model

    cfg = load_config(args.config, overrides={"model": args.model} if args.model else None)
    expect = cfg.export.spec() if cfg.export is not None else None
    return cfg, load_model(cfg.model_path(), expect=expect)


def cmd_train_records(args: argparse.Namespace) -> int:
    from .records.classifier import FitOptions
    from .records.recordae import RecordAEOptions
    from .records.train import train_classifier, train_records

    if not args.verbose:
        logging.getLogger("dpack").setLevel(logging.INFO)
    progress = _log_progress
    segments = not args.no_segments
    try:
        if args.detector == "records":
            opts = RecordAEOptions(
                threshold_method=args.threshold or "sigma",
                sigma_k=args.sigma_k,
                target_fpr=args.target_fpr if args.target_fpr is not None else 0.01,
                cmd_weight=args.cmd_weight,
                seed=args.seed,
                **({"epochs": args.epochs} if args.epochs else {}),
            )
            det = train_records(args.captures, args.out, opts, segments, args.cmd_target, args.name, progress)
            m = det.meta
            print(f"model      {args.out}  (flow-record autoencoder, {m['epochs']} epochs)")
            print(f"records    {m['records']['train']} train, {m['records']['held_out']} held out")
            print(
                f"threshold  {det.threshold:.6g} ({m['threshold_method']}); "
                f"sigma {m['thresholds']['sigma']:.6g}, quantile {m['thresholds']['quantile']:.6g}"
            )
        else:
            fopts = FitOptions(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
            counts = train_classifier(args.captures, args.out, fopts, segments, args.name, progress)
            print(f"model      {args.out}  (CNN-BiLSTM classifier)")
            print(f"classes    {', '.join(f'{k}={v}' for k, v in counts.items())}")
    except (ValueError, FileNotFoundError) as err:
        raise DpackError(str(err)) from None
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import UNKNOWN, describe, legend

    for line in legend(args.tokens):
        print(line)
    return 1 if any(describe(t) == UNKNOWN for t in args.tokens) else 0


def cmd_learn(args: argparse.Namespace) -> int:
    """``dpack train --validate``: learning mode's training and validation on a capture of the site."""
    from .config import LearnConfig
    from .learn import learn_from, report_paths
    from .traffic.encode import PrefixSpec

    if len(args.captures) != 1:
        raise DpackError("train --validate learns from one capture of the site (merge them first: mergecap)")
    try:
        spec = PrefixSpec(args.packets, args.bytes, args.policy)
        res = learn_from(
            args.captures[0],
            args.out,
            {"site": args.site, "learned_live": False} if args.site else {"learned_live": False},
            target_fpr=args.target_fpr if args.target_fpr is not None else LearnConfig.target_fpr,
            max_fpr=args.max_fpr,
            spec=spec,
        )
    except ValueError as err:
        raise DpackError(str(err)) from None
    jpath, hpath = report_paths(args.out)
    if not res["ok"]:
        print(f"refused    {res['reason']}", file=sys.stderr)
        print(f"report     {hpath}", file=sys.stderr)
        return 1
    print(f"model      {args.out}  (learned{' from site ' + args.site if args.site else ''})")
    print(f"flows      {res['train_flows']} learned, {res['heldback_flows']} held back")
    print(f"held back  {res['heldback_fpr']:.4f} flagged (learn.max_fpr {args.max_fpr})")
    print(f"report     {hpath}  ({jpath.name})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .prefix.train import TrainOptions, train
    from .traffic.encode import PrefixSpec

    if args.detector != "prefix":
        return cmd_train_records(args)
    if args.validate:
        return cmd_learn(args)
    try:
        spec = PrefixSpec(args.packets, args.bytes, args.policy)
        opts = TrainOptions(
            arch=args.arch,
            spec=spec,
            val_fraction=args.val_fraction,
            target_fpr=args.target_fpr if args.target_fpr is not None else 0.01,
            threshold_method=args.threshold or "quantile",
            sigma_k=args.sigma_k,
            cnn_epochs=args.cnn_epochs,
            ae_epochs=args.ae_epochs,
            seed=args.seed,
            name=args.name,
        )
    except ValueError as err:
        raise DpackError(str(err)) from None
    bar = tqdm(
        total=1 + opts.cnn_epochs + opts.ae_epochs, unit="step", file=sys.stderr, disable=None, desc="train"
    )

    def progress(msg: str, n: int) -> None:
        bar.set_postfix_str(msg)
        bar.update(n)

    try:
        summary = train(args.captures, args.out, opts, progress)
    except ValueError as err:
        raise DpackError(str(err)) from None
    finally:
        bar.close()
    st = summary["score_stats"]
    print(f"model      {args.out}  ({summary['name']})")
    print(
        f"flows      {summary['provenance']['flows_total']} encoded; {summary['flows']['train']} train, "
        f"{summary['flows']['calibration']} calibration"
    )
    print(f"classes    {', '.join(f'{k}={v}' for k, v in summary['class_counts'].items())}")
    print(f"cnn        profile-class accuracy on calibration flows {summary['cnn_val_accuracy']:.4f}")
    print(
        f"threshold  {summary['threshold']:.6g} ({summary['threshold_method']}; "
        f"quantile {summary['thresholds']['quantile']:.6g}, sigma {summary['thresholds']['sigma']:.6g})"
    )
    print(
        f"calibration FPR at threshold {st['calibration_fpr_at_threshold']:.4f}; "
        f"score p50 {st['calibration']['p50']:.3g} p99 {st['calibration']['p99']:.3g}"
    )
    print(f"time       {summary['provenance']['seconds']} s")
    return 0


def cmd_train_context(args: argparse.Namespace) -> int:
    from .context.state import HostKey
    from .offline.context_fit import fit_context

    cfg, model = _load(args)
    if not 0 < args.target_fpr < 0.5 or not 0.05 <= args.held_back <= 0.5:
        raise DpackError("--target-fpr must be in (0, 0.5) and --held-back in [0.05, 0.5]")
    try:
        key = HostKey(args.prefix_v4, args.prefix_v6)
        r = fit_context(
            model, args.captures, args.out, args.target_fpr, key, args.held_back, cfg.flows.rules(),
            args.workers or cfg.scoring.processes(),
        )  # fmt: skip
    except ValueError as err:
        raise DpackError(str(err)) from None
    print(f"model      {args.out}  ({model.name} + host context, /{key.prefix_v4} and /{key.prefix_v6})")
    print(
        f"flows      {r['flows']} from {r['hosts']} hosts ({r['known_hosts']} with a level of their own); {r['fit_rows']} fit, {r['calibration_rows']} held back"
    )
    print(f"threshold  {r['threshold']:.4g} (summed tails; held-back FPR {r['calibration_fpr']:.4f})")
    print(f"time       {r['seconds']} s")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .context.stage import context_scorer
    from .offline.score import score_capture
    from .prefix.scorer import Scorer

    cfg, model = _load(args)
    scorer = Scorer(
        model,
        explain=args.explain or cfg.scoring.explain,
        top_k=cfg.scoring.top_k,
        cache_size=cfg.scoring.cache_size,
    )
    t0 = time.perf_counter()
    out = None
    tmp = None
    if args.verdicts == "-":
        out = sys.stdout
    elif args.verdicts:
        target = Path(args.verdicts)
        target.parent.mkdir(parents=True, exist_ok=True)
        # exclusive, unpredictable name in the target's directory: a planted name is never followed
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.fchmod(fd, 0o644)
        tmp = Path(tmp_name)
        out = os.fdopen(fd, "w")
    collected: list[Any] = []
    from tqdm import tqdm

    # on a terminal only (disable=None): a pipe or a log gets the summary alone
    bar = tqdm(unit=" flows", desc="score", file=sys.stderr, disable=None, leave=False)
    try:
        run = score_capture(
            args.capture,
            scorer,
            out,
            cfg.scoring.batch_size,
            cfg.flows.rules(),
            keep_top=args.top,
            workers=args.workers or cfg.scoring.processes(),
            on_verdicts=collected.extend if args.rules else None,
            context=None if args.no_context else context_scorer(model, cfg, explain=args.explain),
            progress=bar.update,
        )
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        if out is not None and out is not sys.stdout:
            out.close()
    if tmp is not None:
        os.replace(tmp, args.verdicts)
    dt = time.perf_counter() - t0
    info = sys.stderr if args.verdicts == "-" else sys.stdout
    if args.rules:
        _write_offline_rules(args.rules, cfg, collected, info)
    fs, cs = run.flow_stats, run.capture
    print(
        f"capture  {args.capture}: {cs.frames} frames, {fs.non_ip} non-IP, {fs.malformed} malformed, "
        f"{fs.fragments} fragments, {cs.short_frames} cut by snaplen"
        + (", TRUNCATED" if cs.truncated else ""),
        file=info,
    )
    if fs.evicted:
        print(
            f"note     {fs.evicted} flows ended early: more than flows.max_flows ({cfg.flows.max_flows}) "
            "were open at once",
            file=info,
        )
    if run.flows == 0:
        why = (
            "it holds no frames"
            if cs.frames == 0
            else f"none of its {cs.frames} frames is an IP packet of a flow (link type, or all non-IP?)"
        )
        print(f"note     no flows in this capture: {why}", file=info)
    print(
        f"model    {model.name} (N={model.spec.n_packets}, L={model.spec.n_bytes}, "
        f"policy={model.spec.policy}, threshold={model.threshold:.6g}); learned from {model.learned_from}",
        file=info,
    )
    print(
        f"flows    {run.flows} scored, {run.flagged} flagged ({run.flagged / max(1, run.flows):.2%}) "
        f"in {dt:.2f} s ({run.flows / max(dt, 1e-9):,.0f} flows/s)",
        file=info,
    )
    if run.top:
        print(f"\ntop {len(run.top)} flagged flows", file=info)
        print(f"{'score':>9}  {'proto':<5} {'source':<22} {'destination':<22} explanation", file=info)
        for v in run.top:
            print(
                f"{v.score:9.4g}  {v.proto:<5} {v.src + ':' + str(v.sport):<22} "
                f"{v.dst + ':' + str(v.dport):<22} {', '.join(v.explanation)}",
                file=info,
            )
        from .explain import legend

        print(
            "\nwhat the explanations say (dpack explain TOKEN; docs/manual.md, 'Reading an explanation')",
            file=info,
        )
        for line in legend([t for v in run.top for t in v.explanation]):
            print(f"  {line}", file=info)
    return 0


def _write_offline_rules(path: str, cfg: Any, verdicts: list[Any], info: Any) -> None:
    from .sinks.rules import book_from_config

    book = book_from_config(cfg, path)
    policy = book.policy
    book.observe(verdicts)
    validate = book.suricata is not None
    book.write(validate=validate)
    st = book.stats
    print(
        f"rules    {path}: {len(book.state.entries)} active ({policy.mode}, scope {policy.scope}); "
        f"{st['added']} added, {st['refreshed']} refreshed, {st['allowlisted']} allowlisted; "
        + ("checked with suricata -T" if validate else "NOT checked: suricata not found"),
        file=info,
    )


def cmd_rules(args: argparse.Namespace) -> int:
    from .config import load_config, repo_root
    from .errors import RulesError
    from .sinks.rules import book_from_config

    cfg = load_config(args.config)
    path = args.file or cfg.rules.get("file") or str(repo_root() / "suricata_rules" / "dpack.rules")
    state = cfg.rules.get("state") or f"{path}.state.json"
    if not os.path.exists(path) and not os.path.exists(state):  # a typo must not read as "no rules"
        raise DpackError(f"{one_line(path)}: no such rules file (and no state {one_line(state)})")
    book = book_from_config(cfg, path)
    now = time.time()
    if args.rules_cmd == "list":
        print(f"{'sid':>8} {'rev':>4} {'expires in':>10}  key")
        for e in sorted(book.state.entries.values(), key=lambda e: e.sid):
            print(f"{e.sid:>8} {e.rev:>4} {max(0, e.expires - now):>9.0f}s  {e.key}")
        print(f"{len(book.state.entries)} active entries in {path}")
        return 0
    if args.rules_cmd == "show":
        for e in book.state.entries.values():
            if e.sid == args.sid:
                print(e.rule)
                return 0
        raise RulesError(f"no active rule with sid {args.sid}")
    # under the state's lock, which a running dpack serve takes too: its next write keeps this change
    with book.locked():
        changed = book.expire(now) if args.rules_cmd == "expire" else book.remove(args.address)
        if args.rules_cmd == "remove" and not changed:
            raise RulesError(f"no active entry for {args.address}")
        book.write(validate=book.suricata is not None)
        applied = ""
        socket_path = cfg.rules_setting("socket")
        if socket_path:  # tell the running Suricata, as serve would
            from .sinks.suricata import SuricataSocket

            try:
                applied = "; Suricata: " + book.apply(SuricataSocket(socket_path))
            except (DpackError, OSError) as err:
                applied = f"; Suricata not told ({one_line(err, 120)}): it reads the file at its next reload"
    print(
        f"{len(changed)} entr{'y' if len(changed) == 1 else 'ies'} removed; "
        f"{len(book.state.entries)} active{applied}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .offline.evaluate import evaluate, format_table, labelled_pcap, labelled_sets
    from .prefix.scorer import Scorer

    if args.pcap or args.labels:
        if not (args.pcap and args.labels) or args.benign or args.attack:
            raise DpackError("evaluate takes either --benign/--attack captures or --pcap with --labels")
    elif not (args.benign and args.attack):
        raise DpackError("evaluate needs --benign and --attack captures, or --pcap with --labels")
    cfg, model = _load(args)
    from tqdm import tqdm

    scorer = Scorer(model, explain="none")
    with_stage = model.context is not None and cfg.detectors.context
    steps = ["read and label the flows", "score them"]
    steps += ["host-context stage"] if with_stage else []
    steps += ["write the report"] if args.report else []
    bar = tqdm(total=len(steps), desc="evaluate", unit=" step", file=sys.stderr, disable=None, leave=False)

    def step() -> None:
        bar.set_postfix_str(steps[bar.n] if bar.n < len(steps) else "")

    step()
    data = (
        labelled_pcap(args.pcap, args.labels, model.spec)
        if args.pcap
        else labelled_sets(args.benign, args.attack, model.spec)
    )
    if len(data.flows) == 0:
        bar.close()
        raise DpackError("no labelled flows to evaluate")
    bar.update()
    step()
    m, scores = evaluate(scorer, data)
    bar.update()
    step()
    decided = None
    attack_fams = {f for f, a in zip(data.family, data.is_attack, strict=True) if a}
    print(
        f"model {model.name} (N={model.spec.n_packets}, L={model.spec.n_bytes}, policy={model.spec.policy}); "
        f"learned from {model.learned_from}"
    )
    if data.unlabelled:
        print(f"note: {data.unlabelled} flows had no label row and were left out")
    if with_stage:
        print("the prefix model alone (the first packets; the host-context stage follows):")
    print(format_table(m, attack_fams))
    if with_stage:
        from .offline.evaluate import evaluate_stages, format_headline, format_stages

        stages, decided = evaluate_stages(model, data)
        bar.update()
        step()
        print(
            "\nsame flows, by stage (prefix alone, host context alone, combined; combined is what dpack uses):"
        )
        print(format_stages(stages, attack_fams))
        print("\ncombined, what dpack decides:\n" + format_headline(stages["combined"]))
        m["stages"] = stages
    if args.records_model:
        from .records.recordae import load_record_model
        from .records.train import format_side_by_side, side_by_side
        from .traffic.labels import sample_key

        det = load_record_model(args.records_model)
        flags = {
            sample_key(s): bool(sc > model.threshold)
            for s, sc in zip(data.flows.samples, scores, strict=True)
        }
        caps = [args.pcap] if args.pcap else [*args.benign, *args.attack]
        try:
            rows = side_by_side(caps, det, flags, [args.labels] if args.pcap else [])
        except FileNotFoundError as err:
            raise DpackError(str(err)) from None
        print(f"\nsame flows, flow-record autoencoder {det.name} (threshold {det.threshold:.6g}):")
        print(format_side_by_side(rows, attack_fams))
        m["side_by_side"] = rows
    if args.json:
        from .fileio import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(m, indent=1) + "\n").encode())
    if args.report:
        from .offline.report import write_report

        caps = [args.pcap] if args.pcap else [*args.benign, *args.attack]
        files = write_report(args.report, model, data, scores, decided, m, caps)
        bar.update()
        print(f"report: {files[-1]}")
    bar.close()
    return 0


def cmd_crossval(args: argparse.Namespace) -> int:
    import numpy as np

    from .records.classifier import FitOptions
    from .records.crossval import crossval, format_table, holdout, read_table

    if not args.verbose:
        logging.getLogger("dpack").setLevel(logging.INFO)
    table = read_table(args.dataset)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    y, names = table.target(args.task)
    counts = ", ".join(f"{n} {c}" for c, n in zip(names, np.bincount(y, minlength=len(names)), strict=True))
    how = "hold-out table" if args.test else f"{args.folds}-fold {args.split} split"
    print(f"{table.name}: {len(table)} rows ({counts}); {args.task}, {how}")
    t0 = time.time()
    opts = FitOptions(epochs=args.epochs, seed=args.seed)
    progress = _log_progress
    try:
        if args.test:
            test = read_table(args.test)
            print(f"trained on all of it, scored on {test.name}: {len(test)} rows")
            res = holdout(table, test, args.task, models, opts, progress)
        else:
            res = crossval(table, args.task, args.folds, models, args.split, opts, progress)
    except ValueError as err:
        raise DpackError(str(err)) from None
    print(format_table(res))
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        from .fileio import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(res.as_json(), indent=1) + "\n").encode())
    return 0


# (command, attribute) -> what the output is; a directory output (the evaluation report) is not here.
_OUTPUT_FILES = {
    ("score", "verdicts"): "verdicts file",
    ("score", "rules"): "rules file",
    ("evaluate", "json"): "JSON summary",
    ("crossval", "json"): "JSON summary",
    ("train", "out"): "model file",
    ("train-context", "out"): "model file",
}


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path the command will write, checked before the first packet is read."""
    for (cmd, attr), what in _OUTPUT_FILES.items():
        value = getattr(args, attr, None) if args.cmd == cmd else None
        if value and value != "-":
            check_output(value, what, DpackError)
    report = getattr(args, "report", None) if args.cmd == "evaluate" else None
    if report and Path(report).exists() and not Path(report).is_dir():
        raise DpackError(f"{one_line(report)}: is a file; --report needs a directory for the HTML and PNGs")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = (
        "%(asctime)s dpack: %(levelname)s: %(message)s"
        if args.cmd == "serve"
        else "dpack: %(levelname)s: %(message)s"
    )
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format=fmt)
    try:
        _check_outputs(args)
        cmds = {
            "train": cmd_train,
            "score": cmd_score,
            "evaluate": cmd_evaluate,
            "serve": cmd_serve,
            "rules": cmd_rules,
            "crossval": cmd_crossval,
            "train-context": cmd_train_context,
            "explain": cmd_explain,
        }
        return cmds[args.cmd](args)
    except DpackError as err:
        print(f"dpack: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as err:  # an output that failed mid-run (disk full, path vanished): one line, no traceback
        where = f"{one_line(err.filename)}: " if err.filename else ""
        print(f"dpack: error: {where}{one_line(err.strerror or err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
