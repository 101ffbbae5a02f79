"""The accelerator check (``python benchmarks/accelerator_check.py``) runs end to end
(here on the CPU, with small sizes)."""

import json
import os

from jaxres.tools import accelerator_check

from conftest import ROOT


def test_writes_one_json_line_per_figure(tmp_path):
    out = tmp_path / 'figures.jsonl'
    quickstart = os.path.join(ROOT, 'configs', 'quickstart.py')
    assert accelerator_check.main([
        '--bench_config', quickstart, '--bench_batch', '16', '--bench_steps', '2',
        '--train_config', quickstart, '--train_steps', '3', '--train_examples', '256',
        '--out', str(out)]) == 0
    figures = [json.loads(line) for line in out.read_text().splitlines()]
    assert [f['figure'] for f in figures] == ['devices', 'bench', 'bench', 'train']
    assert figures[0]['platform'] == 'cpu' and figures[0]['conv'] == 'winograd'
    assert [f['dtype'] for f in figures[1:3]] == ['float32', 'bfloat16']
    assert all(f['train_images_per_s'] > 0 for f in figures[1:3])
    assert figures[3]['steps'] == 3 and figures[3]['num_eval'] == 1000
