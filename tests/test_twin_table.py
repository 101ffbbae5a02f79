"""The twin runs' table of record: issue 21's agreement bound and the rows."""

import pytest

from jaxres.tools import twin_table


def _runs(jaxres_acc, torch_acc):
    """Two seeds' curves: accuracies per seed, per epoch; 10 s train + 2 s eval an epoch."""
    curves = lambda acc: {'test_accuracy': acc, 'train_s': [10.0] * len(acc),  # noqa: E731
                          'eval_s': [2.0] * len(acc)}
    return [{'seed': s, 'num_train': 4000, 'num_eval': 2000, 'jaxres': curves(j),
             'torch': curves(t)} for s, (j, t) in enumerate(zip(jaxres_acc, torch_acc))]


def test_agreement_is_issue_21s_bound_at_every_epoch():
    """|mean jaxres - mean PyTorch| <= max(1 point, 2 x the larger seed spread)."""
    runs = _runs(jaxres_acc=[[0.30, 0.50], [0.32, 0.56]], torch_acc=[[0.31, 0.44], [0.31, 0.46]])
    first, second = twin_table.agreement(runs)
    assert first['jaxres_mean'] == pytest.approx(0.31) and first['torch_mean'] == 0.31
    assert first['difference'] == pytest.approx(0.0) and first['spread'] == pytest.approx(0.02)
    assert first['bound'] == pytest.approx(0.04) and first['within']
    # epoch 2: 8 points apart; spreads 6 (jaxres) and 2 points: bound 12 points
    assert second['difference'] == pytest.approx(0.08) and second['bound'] == pytest.approx(0.12)
    assert second['within']
    runs[0]['torch']['test_accuracy'][1] = 0.38  # 11 points apart, PyTorch's spread 8
    assert twin_table.agreement(runs)[1]['within']  # a noisier seed pair widens the bound
    runs[1]['torch']['test_accuracy'][1] = 0.38  # 15 points apart, spreads 6 and 0
    assert not twin_table.agreement(runs)[1]['within']
    flat = _runs([[0.5], [0.5]], [[0.509], [0.509]])  # no spread: the 1-point floor holds
    assert twin_table.agreement(flat)[0]['bound'] == 0.01 and twin_table.agreement(flat)[0]['within']
    assert not twin_table.agreement(_runs([[0.5], [0.5]], [[0.511], [0.511]]))[0]['within']


def test_table_row_says_what_ran_and_whether_it_agreed():
    assert twin_table.report_figure('configs/cifar10_resnet2111.py') == '93.81%'
    assert twin_table.report_figure('configs/cifar10_resnet_b.py') == '70%'
    assert twin_table.report_figure('configs/cifar100_preact.py') == '88.40% top-5'
    runs = _runs(jaxres_acc=[[0.30, 0.50], [0.32, 0.56]], torch_acc=[[0.31, 0.44], [0.31, 0.46]])
    result = {'config': 'configs/cifar10_resnet_b.py', 'epochs': 2, 'runs': runs,
              'overrides': ['--config.dataset=cifar10_jpeg', '--config.data_dir=/d',
                            '--config.schedule.decay_epochs=1']}
    assert twin_table.row(result) == (
        '| `cifar10_resnet_b` | 70% | 2 epochs, 4,000 train / 2,000 test images, seeds 0, 1, '
        'own batches; '
        'schedule.decay_epochs=1 | 53.00% | 45.00% | +8.00 pt '
        '| yes, 2 epochs (nearest the bound: epoch 2, 8.00 of 12.00 pt) | 12 | 12 |')
    runs[0]['torch']['test_accuracy'][1] = runs[1]['torch']['test_accuracy'][1] = 0.38
    assert '| **no**: epochs 2 |' in twin_table.row(result)


def test_paired_statistic_on_known_differences():
    """Per-seed differences 1.9, 2.0, 2.1 pt: mean 2 pt, sd 0.1 pt, se 0.1/sqrt(3) pt;
    the 95% interval is mean +- t(0.975, 2) * se, D = (t(0.975, 2) + t(0.8, 2)) * se."""
    torch_acc = [[0.50], [0.60], [0.70]]
    jaxres_acc = [[0.519], [0.62], [0.721]]
    (p,) = twin_table.paired(_runs(jaxres_acc, torch_acc))
    se = 0.001 / 3 ** 0.5
    t975, t80 = 4.302652729749462, 1.0606601717798214  # scipy.stats.t.ppf(., 2)
    assert p['seeds'] == 3 and p['differences'] == [0.019, 0.02, 0.021]
    assert p['mean'] == pytest.approx(0.02)
    assert (p['low'], p['high']) == (pytest.approx(0.02 - t975 * se, abs=1e-6),
                                     pytest.approx(0.02 + t975 * se, abs=1e-6))
    assert p['detectable'] == pytest.approx((t975 + t80) * se, abs=1e-6)
    assert p['verdict'] == 'bias detected' and not p['passes']  # the interval excludes 0
    assert twin_table.paired_line(p).startswith('epoch 1: bias detected at 3 seeds: '
                                                'jaxres - PyTorch +2.00 pt')
    # Differences around 0 with little scatter: none detected, and D under 1 pt passes.
    (q,) = twin_table.paired(_runs([[0.501], [0.599], [0.7005], [0.6]],
                                   [[0.5], [0.6], [0.7], [0.6]]))
    assert q['verdict'] == 'none detected' and q['low'] < 0 < q['high']
    assert q['detectable'] < 0.01 and q['passes']
    assert 'passes' in twin_table.paired_line(q)
    # Many seeds whose scatter is wide: none detected, but D > 1 pt does not pass.
    (w,) = twin_table.paired(_runs([[0.55], [0.45], [0.52], [0.47]],
                                   [[0.5], [0.5], [0.5], [0.5]]))
    assert w['verdict'] == 'none detected' and w['detectable'] > 0.01 and not w['passes']
    (one,) = twin_table.paired(_runs([[0.5]], [[0.4]]))  # one seed: nothing to conclude
    assert one['detectable'] == float('inf') and one['verdict'] == 'none detected'


def test_paired_row_gives_the_last_epochs_interval_d_and_verdict():
    """Six seeds on the same batches, differences 0.1, -0.2, 0.3, 0, 0.2, -0.1 pt at the
    last epoch: mean +0.05 pt, an interval around 0, D under 1 pt: passes."""
    torch_acc = [[0.3, 0.5]] * 6
    jaxres_acc = [[0.3, 0.5 + d / 100] for d in (0.1, -0.2, 0.3, 0.0, 0.2, -0.1)]
    result = {'config': 'configs/cifar10_resnet18.py', 'epochs': 2, 'same_batches': True,
              'runs': _runs(jaxres_acc, torch_acc),
              'overrides': ['--config.data_dir=/d', '--config.schedule.warmup_epochs=1']}
    p = twin_table.paired(result['runs'])[-1]
    assert p['mean'] == pytest.approx(0.0005) and p['low'] < 0 < p['high']
    assert twin_table.paired_row(result) == (
        '| `cifar10_resnet18` | 2 epochs, 4,000 train / 2,000 test images, 6 seeds (0-5), '
        'same batches; schedule.warmup_epochs=1 | 50.05% | 50.00% | +0.05 pt '
        f'| [{p["low"] * 100:+.2f}, {p["high"] * 100:+.2f}] pt | {p["detectable"] * 100:.2f} pt '
        '| passes |')
    assert p['detectable'] < 0.01
    result['runs'][0]['jaxres']['test_accuracy'][1] = 0.6  # one seed 10 pt off: D > 1 pt
    assert twin_table.paired_row(result).endswith('| none detected, D > 1 pt |')
    for r in result['runs']:  # evaluated on a hold-out of the train split: named so
        r['eval_split'] = 'validation'
    assert '4,000 train / 2,000 held-out (validation) images' in twin_table.paired_row(result)
    for r in result['runs']:
        r['jaxres']['test_accuracy'][1] += 0.03
    assert twin_table.paired_row(result).endswith('| **bias detected** |')


def test_jaxres_vs_jaxres_pairs_two_runs_by_seed(capsys, tmp_path):
    """A jaxres variant against the recipe's jaxres side: seed by seed, whatever the
    order of the runs; a seed the second run lacks is refused."""
    import json
    a = {'runs': _runs([[0.52], [0.62], [0.72]], [[0.0]] * 3)}
    b = {'runs': list(reversed(_runs([[0.50], [0.60], [0.70]], [[0.9]] * 3)))}
    (p,) = twin_table.jaxres_vs_jaxres(a, b)
    assert p['differences'] == [0.02, 0.02, 0.02] and p['verdict'] == 'bias detected'
    for name, result in (('a.json', a), ('b.json', b)):
        (tmp_path / name).write_text(json.dumps(result))
    assert twin_table.main(['--jaxres_vs_jaxres', str(tmp_path / 'a.json'),
                            str(tmp_path / 'b.json')]) == 0
    assert 'bias detected at 3 seeds: first - second +2.00 pt' in capsys.readouterr().out
    b['runs'].pop()
    with pytest.raises(ValueError, match=r'seeds \[0\] are in the first twin.json only'):
        twin_table.jaxres_vs_jaxres(a, b)


def test_merge_joins_seeds_of_the_same_settings(tmp_path):
    """More seeds later: two runs of the same settings merge into one twin.json whose
    statistics cover every seed; other settings or a repeated seed are refused."""
    import json
    head = {'config': 'configs/cifar10_resnet18.py', 'overrides': ['--config.seed=0'],
            'epochs': 1, 'train_subset': 2560, 'test_subset': 0, 'same_batches': True}
    a = dict(head, runs=_runs([[0.51], [0.49]], [[0.5], [0.5]]),
             epochs_side_by_side=[{'seed': 0}, {'seed': 1}])
    b = dict(head, eval_every=1, runs=_runs([[0.52], [0.5], [0.48]], [[0.5]] * 3)[2:])
    b['runs'][0]['seed'] = 2
    merged = twin_table.merge([a, b])
    assert [r['seed'] for r in merged['runs']] == [0, 1, 2]
    assert merged['paired'][0]['differences'] == [0.01, -0.01, -0.02]
    assert merged['paired'] == twin_table.paired(merged['runs'])
    for name, result in (('a.json', a), ('b.json', b)):
        (tmp_path / name).write_text(json.dumps(result))
    assert twin_table.main(['--merge', str(tmp_path / 'm.json'), str(tmp_path / 'a.json'),
                            str(tmp_path / 'b.json')]) == 0
    assert json.loads((tmp_path / 'm.json').read_text())['paired'] == merged['paired']
    with pytest.raises(ValueError, match='a seed appears twice'):
        twin_table.merge([a, a])
    with pytest.raises(ValueError, match='test_subset differ'):
        twin_table.merge([a, dict(b, test_subset=2000)])


def test_a_missing_twin_json_gets_one_message(capsys, tmp_path):
    assert twin_table.main([str(tmp_path / 'none.json')]) == 2
    err = capsys.readouterr().err
    assert 'none.json' in err and 'give twin.json files written by benchmarks/twin.py' in err
    assert 'Traceback' not in err
    assert twin_table.main(['--help']) == 0 and 'OUT/twin.json' in capsys.readouterr().err
