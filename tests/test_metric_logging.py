"""metrics.jsonl writing and reading, and the console's progress line."""

from jaxres import metric_logging


def test_jsonl_round_trip_skips_a_half_written_last_line(tmp_path):
    path = str(tmp_path / 'metrics.jsonl')
    writer = metric_logging.JsonlWriter(path)
    writer.write_scalars(10, {'train_loss': 1.5, 'lr': float('nan')})
    writer.write_scalars(20, {'eval_accuracy': 0.75})
    writer.close()
    with open(path, 'a', encoding='utf-8') as f:
        f.write('{"step": 30, "train_lo')  # a run killed mid-write
    records = metric_logging.read_jsonl(path)
    assert records == [{'step': 10, 'train_loss': 1.5, 'lr': 'nan'},
                       {'step': 20, 'eval_accuracy': 0.75}]


def test_duration():
    assert [metric_logging.duration(s) for s in (0, 12.4, 65, 3599, 3600, 7385)] == [
        '0s', '12s', '1m05s', '59m59s', '1h00m', '2h03m']


def test_progress_line_names_step_epoch_rate_and_both_etas():
    line = metric_logging.progress_line(step=100, total_steps=175, steps_per_epoch=25,
                                        seconds_per_step=8.0, images_per_sec=250.4,
                                        loss=1.19229, accuracy=0.841875, next_eval_step=125)
    assert line == ('step 100/175 (epoch 4.00) | 250 images/s | loss 1.1923, accuracy 84.19% | '
                    'ETA 10m00s (next eval in 3m20s)')
    # The last eval is the end of training: the ETA says it.
    end = metric_logging.progress_line(150, 175, 25, 2.0, 1000.0, 0.5, 0.9, next_eval_step=175)
    assert end.endswith('ETA 50s')
