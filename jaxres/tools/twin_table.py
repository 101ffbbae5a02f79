"""The twin runs' table of record (issue 21) from ``benchmarks/twin.py``'s outputs.

    python benchmarks/twin_table.py OUT/twin.json [OUT2/twin.json ...]
    python benchmarks/twin_table.py --jaxres_vs_jaxres A/twin.json B/twin.json
    python benchmarks/twin_table.py --merge OUT/twin.json A/twin.json B/twin.json

Two markdown tables, one row per twin run.  The paired one (issue 32): the seeds,
the settings, and at the last epoch the mean of the per-seed differences jaxres -
PyTorch in test accuracy, its 95% t interval, the smallest detectable bias D and the
verdict (passes: the interval holds 0 and D <= 1 pt).  Issue 21's: the config, the
figure its seed's report gives (the config docstring's "Expected:"), what ran here,
the mean test accuracy of each framework over the seeds at the last epoch and their
difference, whether the difference stayed within issue 21's bound (max(1 point, 2 x
seed spread)) at every evaluated epoch, and the seconds per epoch (train + eval) of
each framework, the mean over seeds of epochs 2.. (jaxres's first epoch includes
compiling; a 1-epoch run says so).

``agreement`` is that acceptance, epoch by epoch; ``paired`` the paired statistic
(issue 32: per-seed differences, their t interval and the smallest detectable bias
D); ``benchmarks/twin.py`` writes both into twin.json.  ``--jaxres_vs_jaxres``
pairs the jaxres sides of two runs of the same seeds (a variant against the recipe:
another conv lowering, another init) and prints the verdict per epoch.  ``--merge``
joins runs of the same settings and other seeds (more seeds later, until D <= 1 pt)
into one twin.json with the statistics of all.  This module needs numpy and scipy
only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEADER = ('| config | report | run here | jaxres | PyTorch | difference | within the bound '
          '| s/epoch jaxres | s/epoch PyTorch |\n| --- | --- | --- | ---: | ---: | ---: | --- '
          '| ---: | ---: |')
PAIRED_HEADER = ('| config | run here | jaxres | PyTorch | paired difference | 95% interval '
                 '| D | verdict |\n| --- | --- | ---: | ---: | ---: | --- | ---: | --- |')
QUIET = ('--config.dataset=', '--config.data_dir=')  # where the data lies, not the recipe


def evaluated(runs: list[dict]) -> list[tuple[int, int]]:
    """(index in the test curves, epoch) of each evaluation both sides of every run
    made (``eval_epochs``; twin.json files without it evaluated every epoch)."""
    n = min(len(r[fw]['test_accuracy']) for r in runs for fw in ('jaxres', 'torch'))
    epochs = runs[0]['jaxres'].get('eval_epochs') or list(range(1, n + 1))
    return list(enumerate(epochs[:n]))


def agreement(runs: list[dict], floor: float = 0.01) -> list[dict]:
    """Issue 21's acceptance, per evaluated epoch: the mean test accuracy of each
    framework over the seeds, their difference (jaxres - PyTorch), the seed-to-seed
    spread (the larger of the two frameworks' max - min over seeds) and whether
    |difference| <= max(``floor``, 2 x spread)."""
    rows = []
    for e, epoch in evaluated(runs):
        acc = {fw: [r[fw]['test_accuracy'][e] for r in runs] for fw in ('jaxres', 'torch')}
        mean = {fw: float(np.mean(a)) for fw, a in acc.items()}
        spread = max(float(np.ptp(a)) for a in acc.values())
        diff, bound = mean['jaxres'] - mean['torch'], max(floor, 2 * spread)
        rows.append({'epoch': epoch, 'jaxres_mean': round(mean['jaxres'], 6),
                     'torch_mean': round(mean['torch'], 6), 'difference': round(diff, 6),
                     'spread': round(spread, 6), 'bound': round(bound, 6),
                     'within': bool(abs(diff) <= bound)})
    return rows


def paired(runs: list[dict], confidence: float = 0.95, power: float = 0.8,
           goal: float = 0.01) -> list[dict]:
    """Per evaluated epoch, the paired comparison of the seeds (each seed gives both
    frameworks the same initial weights, and with ``--same_batches`` the same
    batches): the per-seed differences jaxres - PyTorch in test accuracy, their
    mean, its two-sided t interval at ``confidence``, and D, the smallest bias this
    many seeds detect with ``power`` at that level,
    ``(t[1 - alpha/2] + t[power]) * sd / sqrt(n)``, both t with n - 1 degrees of
    freedom (D = inf with one seed).  ``verdict``: 'bias detected' when the
    interval excludes 0; otherwise none detected, and ``passes`` when D <= ``goal``.
    """
    from scipy import stats  # pylint: disable=g-import-not-at-top  (scikit-learn's dependency)
    rows = []
    for e, epoch in evaluated(runs):
        d = np.array([r['jaxres']['test_accuracy'][e] - r['torch']['test_accuracy'][e]
                      for r in runs])
        n, mean = len(d), float(np.mean(d))
        if n > 1:
            se = float(np.std(d, ddof=1)) / np.sqrt(n)
            t_level = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
            low, high = mean - t_level * se, mean + t_level * se
            detectable = (t_level + float(stats.t.ppf(power, n - 1))) * se
        else:
            low, high, detectable = -np.inf, np.inf, np.inf
        detected = not low <= 0 <= high
        rows.append({'epoch': epoch, 'seeds': n, 'differences': [round(float(x), 6) for x in d],
                     'mean': round(mean, 6), 'low': round(float(low), 6),
                     'high': round(float(high), 6), 'detectable': round(float(detectable), 6),
                     'verdict': 'bias detected' if detected else 'none detected',
                     'passes': bool(not detected and detectable <= goal)})
    return rows


def paired_line(p: dict, what: str = 'jaxres - PyTorch') -> str:
    """One line of ``paired``'s verdict for an epoch (``what`` names the difference)."""
    interval = f'[{p["low"] * 100:+.2f}, {p["high"] * 100:+.2f}] pt'
    if p['verdict'] == 'bias detected':
        return (f'epoch {p["epoch"]}: bias detected at {p["seeds"]} seeds: {what} '
                f'{p["mean"] * 100:+.2f} pt, 95% interval {interval}')
    return (f'epoch {p["epoch"]}: no bias detected at {p["seeds"]} seeds ({what} '
            f'{p["mean"] * 100:+.2f} pt, 95% interval {interval}), smallest detectable bias '
            f'D = {p["detectable"] * 100:.2f} pt: {"passes" if p["passes"] else "D > 1 pt"}')


def jaxres_vs_jaxres(a: dict, b: dict) -> list[dict]:
    """``paired`` of run ``a``'s jaxres side against run ``b``'s (same seeds)."""
    by_seed = {r['seed']: r for r in b['runs']}
    missing = [r['seed'] for r in a['runs'] if r['seed'] not in by_seed]
    if missing:
        raise ValueError(f'seeds {missing} are in the first twin.json only')
    return paired([{'jaxres': r['jaxres'], 'torch': by_seed[r['seed']]['jaxres']}
                   for r in a['runs']])


SETTINGS = ('config', 'overrides', 'epochs', 'train_subset', 'test_subset', 'eval_every',
            'same_order', 'same_batches', 'torch_from')


def merge(results: list[dict]) -> dict:
    """One twin.json of the runs of ``results`` (the same ``SETTINGS``, no seed
    twice), its agreement and paired statistic over all of them."""
    first = results[0]
    for other in results[1:]:
        differ = [k for k in SETTINGS if other.get(k, 1 if k == 'eval_every' else None)
                  != first.get(k, 1 if k == 'eval_every' else None)]
        if differ:
            raise ValueError(f'cannot merge runs of other settings: {", ".join(differ)} differ')
    runs = [r for result in results for r in result['runs']]
    seeds = [r['seed'] for r in runs]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f'cannot merge: a seed appears twice ({sorted(seeds)})')
    return dict(first, runs=runs, agreement=agreement(runs), paired=paired(runs),
                epochs_side_by_side=[row for result in results
                                     for row in result.get('epochs_side_by_side', [])])


def report_figure(config_path: str) -> str:
    """The "Expected: ..." figure of a config's docstring, e.g. '93.81%'."""
    with open(config_path, encoding='utf-8') as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ''
    found = re.search(r'Expected:\s*((?:about\s+)?[\d.-]+%(?:\s+top-5)?)', doc)
    return found.group(1) if found else '-'


def seconds_per_epoch(runs: list[dict], framework: str) -> float:
    """Mean train + eval seconds per epoch over the seeds, epochs 2.. when each epoch
    was evaluated (the first includes compiling), else over the whole run."""
    per_eval = [np.add(r[framework]['train_s'], r[framework]['eval_s']) for r in runs]
    epochs = [len(r[framework].get('train_loss') or s) for r, s in zip(runs, per_eval)]
    if all(len(s) == n for s, n in zip(per_eval, epochs)):
        return float(np.mean([s[1:] if len(s) > 1 else s for s in per_eval]))
    return float(np.mean([np.sum(s) / n for s, n in zip(per_eval, epochs)]))


def settings_text(result: dict, runs: list[dict]) -> str:
    """What ran: epochs, images, seeds, batches and the overrides of the recipe."""
    settings = [o.removeprefix('--config.') for o in result['overrides']
                if not o.startswith(QUIET)]
    seeds = [r['seed'] for r in runs]
    seed_text = (f'{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})'
                 if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2
                 else 'seeds ' + ', '.join(map(str, seeds)))
    batches = ('same batches' if result.get('same_batches') else
               'same order' if result.get('same_order') else 'own batches')
    split = runs[0].get('eval_split', 'test')  # twin.json files before it was recorded: test
    evaluated = 'held-out (validation)' if split == 'validation' else split
    return (f'{result["epochs"]} epoch{"s" * (result["epochs"] > 1)}, '
            f'{runs[0]["num_train"]:,} train / {runs[0]["num_eval"]:,} {evaluated} images, '
            f'{seed_text}, {batches}' + (f'; {", ".join(settings)}' if settings else ''))


def paired_row(result: dict) -> str:
    """The paired table's row of one twin.json: its last epoch."""
    runs = result['runs']
    p, last = paired(runs)[-1], agreement(runs)[-1]
    verdict = ('**bias detected**' if p['verdict'] == 'bias detected' else
               'passes' if p['passes'] else 'none detected, D > 1 pt')
    name = os.path.splitext(os.path.basename(result['config']))[0]
    return (f'| `{name}` | {settings_text(result, runs)} | {last["jaxres_mean"]:.2%} '
            f'| {last["torch_mean"]:.2%} | {p["mean"] * 100:+.2f} pt '
            f'| [{p["low"] * 100:+.2f}, {p["high"] * 100:+.2f}] pt '
            f'| {p["detectable"] * 100:.2f} pt | {verdict} |')


def row(result: dict, root: str = ROOT) -> str:
    """The table row of one twin.json."""
    runs = result['runs']
    epochs = agreement(runs)  # derived from the curves (older twin.json files lack it)
    last = epochs[-1]
    missed = [a['epoch'] for a in epochs if not a['within']]
    worst = max(epochs, key=lambda a: abs(a['difference']) - a['bound'])
    within = (f'yes, {len(epochs)} epoch{"s" * (len(epochs) > 1)} (nearest the bound: epoch {worst["epoch"]}, '
              f'{abs(worst["difference"]) * 100:.2f} of {worst["bound"] * 100:.2f} pt)'
              if not missed
              else f'**no**: epochs {", ".join(map(str, missed))}')
    ran = settings_text(result, runs)
    name = os.path.splitext(os.path.basename(result['config']))[0]
    compiling = ' (with compiling)' if len(epochs) == 1 else ''
    return (f'| `{name}` | {report_figure(os.path.join(root, result["config"]))} | {ran} '
            f'| {last["jaxres_mean"]:.2%} | {last["torch_mean"]:.2%} '
            f'| {last["difference"] * 100:+.2f} pt | {within} '
            f'| {seconds_per_epoch(runs, "jaxres"):.0f}{compiling} '
            f'| {seconds_per_epoch(runs, "torch"):.0f} |')


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths or paths[0] in ('-h', '--help'):
        print(__doc__.strip().split('\n\n')[1], file=sys.stderr)
        return 0 if paths else 2
    try:
        return _tables(paths)
    except ValueError as e:  # an unreadable twin.json, or runs that cannot be joined
        print(f'twin_table.py: {e}', file=sys.stderr)
        return 2


def _tables(paths: list[str]) -> int:
    """``main`` after its usage check: the tables, the jaxres pairing or the merge."""
    if paths[0] == '--jaxres_vs_jaxres':
        if len(paths) != 3:
            print('usage: twin_table.py --jaxres_vs_jaxres A/twin.json B/twin.json',
                  file=sys.stderr)
            return 2
        for p in jaxres_vs_jaxres(*(load(path) for path in paths[1:])):
            print(paired_line(p, 'first - second'))
        return 0
    if paths[0] == '--merge':
        if len(paths) < 4:
            print('usage: twin_table.py --merge OUT/twin.json A/twin.json B/twin.json ...',
                  file=sys.stderr)
            return 2
        merged = merge([load(path) for path in paths[2:]])
        with open(paths[1], 'w', encoding='utf-8') as f:
            json.dump(merged, f, indent=1)
        for p in merged['paired']:
            print(paired_line(p))
        return 0
    results = [load(path) for path in paths]
    print(PAIRED_HEADER)
    for result in results:
        print(paired_row(result))
    print()
    print(HEADER)
    for result in results:
        print(row(result))
    return 0


def load(path: str) -> dict:
    """One twin.json; ValueError naming the file when it cannot be read."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'cannot read {path} ({e}): give twin.json files written by '
                         'benchmarks/twin.py') from None


if __name__ == '__main__':
    sys.exit(main())
