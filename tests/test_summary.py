"""--mode=summary: the parameter table, FLOPs per example, then the total."""

from jaxres.tools import summary

from conftest import tiny_config


def test_summary_prints_flops_before_the_total():
    lines = summary.model_summary(tiny_config(), 4, (8, 8, 3)).splitlines()
    assert lines[-1].startswith('Total parameters: ')
    assert lines[-2].startswith('FLOPs per example')
    small = summary.model_summary(tiny_config(), 4, (8, 8, 3))
    big = summary.model_summary(tiny_config(), 4, (16, 16, 3))

    def flops(text):
        value, unit = text.splitlines()[-2].split(': ')[1].split()
        return float(value) * {'K': 1e3, 'M': 1e6, 'G': 1e9}[unit]

    # A conv net's work grows with the number of pixels: 4x the pixels, ~4x the FLOPs.
    assert 3.5 < flops(big) / flops(small) < 4.7
