"""`nextchar lecture …`: the lecture's steps, one sub-command each (see docs/lecture.md).

table TEXT -m M          the "last m characters" state machine's table (and the RNN's check)
weights                  the fixed W^sx, W^ss of that machine for a small alphabet
gradcheck                hand-written BPTT vs finite differences and vs PyTorch autograd
train                    SGD on the lecture's three lines until they are reproduced
load -m DIR TEXT         a nextchar rnn (or window) checkpoint run by the NumPy engine
serve                    the lecture you can watch (/lecture) over the NumPy engine
plot VIEW TEXT --out F   one of the page's four views as a PNG
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from nextchar.cli.options import add_model_option, positive_float, positive_int
from nextchar.errors import UserError

if TYPE_CHECKING:
    from nextchar.lecture.sgd import ExampleResult
    from nextchar.service.lecture import LectureSource


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lecture",
        help="the RNN lecture, runnable (NumPy, hand-written backprop)",
        description="Every step of MIT 6.036's RNN lecture, run in the lecture's notation: "
        "state machines, the window machine as a fixed-weight RNN, forward and "
        "backward passes by hand (checked), and SGD on the lecture's three lines.",
    )
    p.set_defaults(run=lambda args: _no_step(p))
    steps = p.add_subparsers(dest="lecture_step", metavar="STEP", parser_class=type(p))
    for add in (_add_table, _add_weights, _add_gradcheck, _add_train, _add_load, _add_serve, _add_plot):
        add(steps)


def _add_table(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = steps.add_parser(
        "table",
        help="the state table of the last-m-characters machine",
        description="Run the lecture's 'last m characters' state machine on TEXT and print "
        "its table (t, x_t, s_t); spaces are shown as _. Also runs the same "
        "machine as a one-hot RNN with fixed weights and checks its states.",
    )
    q.add_argument("text", metavar="TEXT", help='the input, e.g. "^what happens"')
    q.add_argument("-m", type=positive_int, default=3, help="characters kept in the state (default 3)")
    q.add_argument("--start", default="^", help="the start character filling s_0 (default ^)")
    q.set_defaults(run=_run_table)


def _add_weights(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = steps.add_parser(
        "weights",
        help="the fixed W^sx, W^ss of the window machine",
        description="Print the fixed weights that make the window machine an RNN, "
        "s_t = W^sx x_t + W^ss s_{t-1}. The default is the lecture's example: "
        "alphabet {0,1} as scalars and m = 3.",
    )
    q.add_argument("--alphabet", default="01", help="the characters (default 01)")
    q.add_argument("-c", "--context", type=positive_int, default=3, help="characters of context c (default 3)")
    q.add_argument(
        "--encoding",
        choices=("scalar", "one-hot"),
        default=None,
        help="scalar: two characters as the numbers 0 and 1 (m = c); one-hot: block form "
        "(m = c·ℓ). Default: scalar for two characters, else one-hot",
    )
    q.add_argument("--run", metavar="TEXT", dest="trace", help="also run the RNN on TEXT and print every s_t")
    q.set_defaults(run=_run_weights)


def _add_gradcheck(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = steps.add_parser(
        "gradcheck",
        help="check the hand-written gradients",
        description="For random shapes, weights and batches of sequences of different "
        "lengths, compare the gradients of J from hand-written backpropagation "
        "through time with central finite differences and with PyTorch autograd "
        "on nextchar's rnn model, all in float64. Prints the worst relative "
        "error per parameter array.",
    )
    q.add_argument("--trials", type=positive_int, default=20, help="random problems per f1 (default 20)")
    q.add_argument("--seed", type=int, default=0, help="first random seed (default 0)")
    q.add_argument("--eps", type=positive_float, default=1e-6, help="finite-difference step ε (default 1e-6)")
    q.set_defaults(run=_run_gradcheck)


def _add_train(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from nextchar.lecture.sgd import SGDConfig

    d = SGDConfig()
    q = steps.add_parser(
        "train",
        help="SGD on the lecture's three lines until they are reproduced",
        description="Train the lecture's RNN by SGD (pick a line i at random, step along "
        "−∇L_seq(i)) on the lecture's three lines, until greedy decoding from "
        "each line's first character reproduces the whole line. Prints each "
        "line's reconstruction; exit status 1 if a line is not reproduced.",
    )
    q.add_argument("--lines", metavar="FILE", help="train on the lines of FILE instead (a-z and space only)")
    q.add_argument("--hidden", type=positive_int, default=64, help="state size m (default 64)")
    q.add_argument("--f1", choices=("tanh", "relu"), default="tanh", help="the state nonlinearity (default tanh)")
    q.add_argument("--lr", type=positive_float, default=d.lr, help=f"step size η (default {d.lr})")
    q.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.batch_size,
        help=f"lines per update; 1 is the lecture's SGD (default {d.batch_size})",
    )
    q.add_argument("--clip", type=float, default=d.clip, help=f"gradient-norm clip, 0 = off (default {d.clip})")
    q.add_argument("--steps", type=positive_int, default=d.steps, help=f"at most this many updates (default {d.steps})")
    q.add_argument(
        "--check-every", type=positive_int, default=10, help="test the reconstructions every N updates (default 10)"
    )
    q.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    q.add_argument("--out", metavar="DIR", help="save the trained model as a nextchar rnn checkpoint")
    q.add_argument("--plot", metavar="FILE", help="save a PNG: loss curve, heatmap of s_t along line 1")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=_run_train)


def _add_load(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = steps.add_parser(
        "load",
        help="run a nextchar checkpoint in the NumPy engine",
        description="Load a nextchar rnn checkpoint (or a window checkpoint, as the lecture's "
        "fixed-weight RNN plus its classifier) into the NumPy engine, print the "
        "most likely next characters after TEXT, and compare every p_t with the "
        "PyTorch model's.",
    )
    q.add_argument("text", metavar="TEXT", help="what has been typed (may be empty)")
    add_model_option(q)
    q.add_argument("-k", type=positive_int, default=5, help="how many characters (default 5)")
    q.set_defaults(run=_run_load)


def _add_source_options(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "-m",
        "--model",
        metavar="DIR",
        help="a nextchar checkpoint: rnn or window (run by the NumPy engine), lstm or gru (by PyTorch); "
        "default: the lecture's RNN, trained on its three lines at start (NumPy, under a second)",
    )
    q.add_argument("--hidden", type=positive_int, default=64, help="m of the lecture's RNN (default 64, at most 256)")


def _add_serve(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = steps.add_parser(
        "serve",
        help="the lecture you can watch: a page over the NumPy engine",
        description="Serve the page of `nextchar serve`'s /lecture alone: the state machine, the RNN's state "
        "s_t, p_t and backpropagation through time, live as you type, computed by nextchar.lecture. "
        "Needs the [serve] extra. Binds to 127.0.0.1 unless told otherwise.",
    )
    _add_source_options(q)
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    q.add_argument("--port", type=int, default=8001, help="port (default 8001; 0 picks a free one)")
    q.set_defaults(run=_run_serve)


def _add_plot(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from nextchar.lecture.figures import FIGURES

    q = steps.add_parser(
        "plot",
        help="one of the lecture page's views as a PNG",
        description="Draw one of the four views of the lecture page (/lecture) for TEXT as a PNG: machine "
        "(the last-m-characters machine), state (s_t as a heatmap), distribution (p_t, L_seq, BPC), "
        "bptt (gradient norms back through time).",
    )
    q.add_argument("view", choices=FIGURES, metavar="VIEW", help=f"one of {', '.join(FIGURES)}")
    q.add_argument("text", metavar="TEXT", help='the text, e.g. "what happens" (at most 200 characters)')
    q.add_argument("--out", metavar="FILE", required=True, help="the PNG to write")
    _add_source_options(q)
    q.add_argument("-c", "--context", type=positive_int, default=3, help="machine: characters of context m (default 3)")
    q.add_argument("--unit", type=int, help="state: the unit to colour the text by (default: the most correlated)")
    q.add_argument("--f1", choices=("tanh", "relu"), default="tanh", help="bptt: the nonlinearity (default tanh)")
    q.add_argument("--scale", type=positive_float, default=1.0, help="bptt: the factor α on W^ss (default 1)")
    q.set_defaults(run=_run_plot)


def _no_step(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# ------------------------------------------------------------------------------ table, weights


def _run_table(args: argparse.Namespace) -> int:
    from nextchar.lecture.statemachine import format_table, window_machine, window_rnn

    if not args.text:
        raise UserError('TEXT is empty; give the characters to feed the machine, e.g. "^what happens"')
    if len(args.start) != 1:
        raise UserError(f"--start must be one character, not {args.start!r}")
    machine = window_machine(args.m, args.start)
    table = machine.transduce(args.text)
    print(f"last m = {args.m} characters: s_0 = {args.start * args.m!r}, s_t = f(s_t-1, x_t) = (s_t-1 + x_t)[-m:]")
    print(format_table(table))
    alphabet = sorted(set(args.text) | {args.start})
    rnn = window_rnn(alphabet, args.m, args.start)
    states = rnn.states(args.text)
    same = all(np.array_equal(vec, rnn.encode_state(row.s)) for vec, row in zip(states, table, strict=True))
    print(
        f"\nthe same machine as an RNN with fixed weights (alphabet of ℓ = {rnn.ell} characters, one-hot; "
        f"m = c·ℓ = {rnn.m}):\nits states equal the table's, one-hot coded, at all {len(table)} steps: "
        f"{'yes' if same else 'NO'}"
    )
    return 0 if same else 1


def _run_weights(args: argparse.Namespace) -> int:
    from nextchar.lecture.statemachine import format_matrix, window_rnn

    encoding = args.encoding or ("scalar" if len(args.alphabet) == 2 else "one-hot")
    rnn = window_rnn(args.alphabet, args.context, encoding=encoding)
    coding = (
        "characters as scalars: " + ", ".join(f"{ch!r} = {k}" for k, ch in enumerate(rnn.alphabet))
        if encoding == "scalar"
        else f"characters one-hot over {''.join(rnn.alphabet)!r}"
    )
    print(
        f"alphabet of ℓ = {len(rnn.alphabet)} characters, {coding}; c = {args.context} characters of context, "
        f"state size m = {rnn.m}"
    )
    print("s_t = W^sx x_t + W^ss s_t-1   (newest character first in s_t)\n")
    print(format_matrix("W^sx", rnn.W_sx))
    print()
    print(format_matrix("W^ss", rnn.W_ss))
    if args.trace is not None:
        states = rnn.states(args.trace)
        print(f"\nrunning on {args.trace!r} from s_0 = {rnn.start * args.context!r}:")
        for t, s in enumerate(states):
            x = args.trace[t - 1] if t else ""
            vector = " ".join(str(int(v)) for v in s)
            print(f"  t={t:<2} x_t={x!r:5} s_t = [{vector}]   last {args.context}: {rnn.decode_state(s)!r}")
    return 0


# ------------------------------------------------------------------------------ gradcheck


def _run_gradcheck(args: argparse.Namespace) -> int:
    from nextchar.lecture.convert import autograd_check
    from nextchar.lecture.rnn import NAMES, gradient_check, random_problem

    worst: dict[tuple[str, str, str], float] = {}
    shapes: set[tuple[int, int, int]] = set()
    started = time.perf_counter()
    for f1 in ("tanh", "relu"):
        for trial in range(args.trials):
            seed = args.seed + trial
            params, batch = random_problem(seed, f1)
            shapes.add((params.m, params.ell, params.v))
            for name, err in gradient_check(params, batch, f1, args.eps).items():
                worst[("fd", f1, name)] = max(worst.get(("fd", f1, name), 0.0), err)
            params, batch = random_problem(seed, f1, same_alphabet=True)
            for name, err in autograd_check(params, batch, f1).items():
                worst[("ag", f1, name)] = max(worst.get(("ag", f1, name), 0.0), err)
    elapsed = time.perf_counter() - started
    print(
        f"{args.trials} random problems per f1, float64: m, ℓ, v from 1 to 6 (against PyTorch ℓ = v from 4 to 9, "
        "as its rnn model reads its own vocabulary); 1–3 sequences of 1–6 characters"
    )
    print("worst relative error ‖a − b‖ / (‖a‖ + ‖b‖) of dJ/dW, hand-written BPTT against:\n")
    print(f"{'':8}  {'finite differences':^21}  {'PyTorch autograd':^21}".rstrip())
    print(f"{'':8}  {'tanh':>10} {'relu':>10}  {'tanh':>10} {'relu':>10}")
    ok = True
    for name in ("J", *NAMES):
        cells = []
        for method in ("fd", "ag"):
            for f1 in ("tanh", "relu"):
                worst_err = worst.get((method, f1, name))
                cells.append(f"{'':>10}" if worst_err is None else f"{worst_err:10.1e}")
                limit = 1e-6 if method == "fd" else 1e-9
                ok &= worst_err is None or worst_err < limit
        print(f"{name:8}  {cells[0]} {cells[1]}  {cells[2]} {cells[3]}")
    print(
        f"\n{'passed' if ok else 'FAILED'}: every finite-difference error below 1e-6 and every autograd "
        f"difference below 1e-9 ({elapsed:.1f} s)"
    )
    return 0 if ok else 1


# ------------------------------------------------------------------------------ train


def _run_train(args: argparse.Namespace) -> int:
    from nextchar.lecture.sgd import THREE_LINES, SGDConfig, worked_example
    from nextchar.text import read_corpus, split_lines

    if args.clip < 0:
        raise UserError(f"--clip must be 0 (off) or positive, not {args.clip}")
    lines = tuple(split_lines(read_corpus(args.lines))) if args.lines else THREE_LINES
    config = SGDConfig(
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        clip=args.clip,
        seed=args.seed,
        check_every=args.check_every,
    )
    print(
        f"the lecture's RNN: m = {args.hidden}, f1 = {args.f1}, ℓ = v = 30 (a-z, space, <start>, <end>, <unk>); "
        f"SGD with η = {config.lr}, {config.batch_size} line{'s' if config.batch_size > 1 else ''} per update, "
        f"clip {config.clip or 'off'}; {len(lines)} lines",
        file=sys.stderr,
    )
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, unit="update", desc="training", leave=False, file=sys.stderr)

    def on_step(step: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")

    started = time.perf_counter()
    try:
        result = worked_example(lines, args.hidden, config, args.f1, on_step)
    finally:
        if bar is not None:
            bar.close()
    _report_example(result, time.perf_counter() - started)
    if args.out:
        from nextchar.lecture.convert import save_as_checkpoint

        save_as_checkpoint(
            args.out,
            result.params,
            result.f1,
            result.vocab,
            "lines",
            training={"lines": list(result.lines), "sgd": vars(config) | {"hidden": args.hidden}},
            metrics={"loss": result.history.loss[-1], "updates": result.steps},
        )
        print(f"\ncheckpoint: {args.out}  (try: nextchar predict 'wha' -m {args.out})")
    if args.plot:
        from nextchar.lecture.plot import plot_example

        plot_example(args.plot, result)
        print(f"plot: {args.plot}")
    return 0 if result.solved else 1


def _report_example(result: ExampleResult, elapsed: float) -> None:
    """Whether every line was reproduced, the loss and gradient norms, and each line's reconstruction."""
    h = result.history
    if result.solved:
        print(f"every line reproduced after {result.solved_at} updates ({elapsed:.1f} s)")
    else:
        print(f"not every line reproduced after {result.steps} updates ({elapsed:.1f} s)")
    print(
        f"final loss {h.loss[-1]:.4f} nats/character; largest gradient norm {max(h.grad_norm):.3g}, "
        f"clipped in {h.clipped} of {result.steps} updates\n"
    )
    width = max(len(line) for line in result.lines)
    for line, got in zip(result.lines, result.reconstructions, strict=True):
        print(f"  {line[0]} → {got:<{width}}  {'✓' if got == line else '✗ expected ' + repr(line)}")


# ------------------------------------------------------------------------------ load


def _run_load(args: argparse.Namespace) -> int:
    from nextchar.checkpoint import load_checkpoint
    from nextchar.lecture.convert import from_checkpoint, torch_probabilities, window_from_checkpoint
    from nextchar.lecture.rnn import forward, make_batch
    from nextchar.lecture.statemachine import show
    from nextchar.text import START

    ckpt = load_checkpoint(args.model)
    kind = ckpt.model.config.kind
    converted = window_from_checkpoint(args.model) if kind == "window" else from_checkpoint(args.model)
    vocab, params = converted.vocab, converted.params
    text = vocab.prepare(args.text)
    indices = [START]
    for position, ch in enumerate(text):
        if ch not in vocab.chars:
            raise UserError(f"character {ch!r} (position {position} of TEXT) is not in the model's alphabet")
        indices.append(vocab.encode(ch)[0])
    batch = make_batch([indices], [[0] * len(indices)], params.ell, params.v)
    p_engine = forward(params, batch, converted.f1, converted.s0).P[0]
    p_torch = torch_probabilities(ckpt.model, indices)
    if kind == "window":
        print(
            f"window checkpoint (c = {ckpt.model.config.context}) as the fixed-weight RNN: "
            f"W^sx {params.m}×{params.ell}, W^ss {params.m}×{params.m} (shift), f1 = relu, "
            f"s_0 = {ckpt.model.config.context} × <start>; W^o {params.v}×{params.m} from the checkpoint"
        )
    else:
        print(f"rnn checkpoint: m = {params.m}, ℓ = v = {params.v}, f1 = {converted.f1}")
    top = np.argsort(-p_engine[-1])[: args.k]
    print(f"after {('^' + text)!r}, the NumPy engine predicts:")
    for i in top:
        symbol = vocab.symbol(int(i))
        print(f"  {show(symbol) if symbol != ' ' else '_':>3}  {p_engine[-1, i]:6.3f}")
    diff = float(np.abs(p_engine - p_torch).max())
    print(f"largest |p_t(engine) − p_t(PyTorch)| over the {len(indices)} steps: {diff:.1e}")
    return 0


# ------------------------------------------------------------------------------ serve, plot


def _source(args: argparse.Namespace) -> LectureSource:
    """The model the views run: the lecture's RNN, or a checkpoint (rnn/window: NumPy; lstm/gru: PyTorch)."""
    from nextchar.lecture.bptt import MAX_BPTT_UNITS, LectureModels, LectureRNN
    from nextchar.service.lecture import ModelSource, NumpySource

    if args.hidden > MAX_BPTT_UNITS:
        raise UserError(f"--hidden must be at most {MAX_BPTT_UNITS}, not {args.hidden}")
    models = LectureModels(hidden=args.hidden)
    if args.model is None:
        return NumpySource(models.get("tanh"), "the lecture's RNN", lecture_models=models)
    from nextchar.checkpoint import load_checkpoint
    from nextchar.lecture.convert import from_checkpoint, window_from_checkpoint

    ckpt = load_checkpoint(args.model)
    kind = ckpt.model.config.kind
    if kind in ("rnn", "window"):
        got = window_from_checkpoint(args.model) if kind == "window" else from_checkpoint(args.model)
        described = f"{args.model} ({kind}, m = {got.params.m}, f1 = {got.f1})"
        model = LectureRNN(got.params, got.f1, got.vocab, described)
        return NumpySource(model, str(args.model), kind, got.s0, lecture_models=models)
    return ModelSource(ckpt.model.eval(), ckpt.vocab, str(args.model), lecture_models=models)


def _run_serve(args: argparse.Namespace) -> int:
    import socket

    from nextchar.cli.options import require_extra

    require_extra("serve", "fastapi", "uvicorn", command="lecture serve")
    import uvicorn

    from nextchar.service.lecture import create_lecture_app

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0 … 65535, not {args.port}")
    app = create_lecture_app(_source(args))
    try:
        sock = socket.create_server((args.host, args.port), reuse_port=False)
    except (OSError, OverflowError) as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc}); pick another --port or --host") from None
    host, port = sock.getsockname()[:2]
    print(f"nextchar: the lecture you can watch at http://{host}:{port}/lecture; Ctrl-C stops", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


def _run_plot(args: argparse.Namespace) -> int:
    import asyncio

    from nextchar.lecture.bptt import bptt_view
    from nextchar.lecture.figures import PLOTTERS, plot_state
    from nextchar.lecture.views import check_text, distribution_view, machine_view, state_view

    check_text(args.text)
    if args.view == "machine":
        view = machine_view(args.text, args.context)
    elif args.view == "bptt":
        source = _source(args)
        view = bptt_view(source.lecture_rnn(args.f1), args.text, args.f1, args.scale)
    else:
        trace = asyncio.run(_source(args).trace(args.text, ""))
        view = state_view(trace) if args.view == "state" else distribution_view(trace)
    if args.view == "state":
        if args.unit is not None and not 0 <= args.unit < view["units_shown"]:
            raise UserError(f"--unit must be 0 … {view['units_shown'] - 1}, not {args.unit}")
        plot_state(view, args.out, args.unit)
    else:
        PLOTTERS[args.view](view, args.out)
    print(f"plot: {args.out}")
    return 0
