"""Files written on one stack load on the other: the post's (Keras 2) and the current (Keras 3).

The other stack's interpreter is named by $OMNIGLOT_INVERSION_OTHER_PYTHON (`.ci/run` sets it for
the post's stack to the current stack's); each side writes a target's weights, its on-device stage
and an attacker's weights with the codes and reconstructions of fixed images, and the other side
loads the files and must answer the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OTHER = os.environ.get("OMNIGLOT_INVERSION_OTHER_PYTHON")

WRITE = """
import sys, numpy as np, tensorflow as tf
from omniglot_inversion import AttackModel, TargetModel
from omniglot_inversion.network.interception import save_mobile_stage
from omniglot_inversion.network.weights import save_weights
out = sys.argv[1]
tf.keras.utils.set_random_seed(0)
target, attacker = TargetModel(), AttackModel()
images = np.random.default_rng(0).uniform(size=(4, 105, 105, 1)).astype('float32')
save_weights(target, out + '/target_weights.h5')
save_mobile_stage(target, out + '/mobile_stage.h5')
save_weights(attacker, out + '/attacker_weights.h5')
codes = target.mobile_step(images).numpy()
np.savez(out + '/expected.npz', images=images, codes=codes, classes=target(images).numpy(),
         reconstructions=attacker(codes).numpy())
"""

READ = """
import sys, numpy as np
from omniglot_inversion import AttackModel, TargetModel, load_intercepted
out = sys.argv[1]
expected = np.load(out + '/expected.npz')
target, attacker = TargetModel(), AttackModel()
target.load_weights(out + '/target_weights.h5')
attacker.load_weights(out + '/attacker_weights.h5')
np.testing.assert_allclose(target(expected['images']).numpy(), expected['classes'], rtol=1e-5, atol=1e-6)
stage = load_intercepted(out + '/mobile_stage.h5')
np.testing.assert_allclose(stage.mobile_step(expected['images']).numpy(), expected['codes'], rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(attacker(expected['codes']).numpy(), expected['reconstructions'], rtol=1e-5, atol=1e-6)
print('loaded')
"""


def _run(python: str, code: str, folder: Path) -> str:
    result = subprocess.run([python, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.post
@pytest.mark.skipif(OTHER is None, reason="needs the other stack's Python in $OMNIGLOT_INVERSION_OTHER_PYTHON "
                    "(.ci/run sets it)")
@pytest.mark.parametrize("direction", ["this stack writes", "the other stack writes"])
def test_files_written_on_one_stack_load_on_the_other(tmp_path, direction):
    writer, reader = (sys.executable, OTHER) if direction == "this stack writes" else (OTHER, sys.executable)
    _run(writer, WRITE, tmp_path)
    assert _run(reader, READ, tmp_path).strip().endswith("loaded")


def test_a_file_written_here_loads_here(tmp_path):
    """The same round trip within one stack, on every stack."""
    _run(sys.executable, WRITE, tmp_path)
    assert _run(sys.executable, READ, tmp_path).strip().endswith("loaded")
