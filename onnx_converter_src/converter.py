"""Export a trained ChainerRL DQN to ONNX, as a file or into a Triton model repository.

    python onnx_converter_src/converter.py --model results/<run>/best --repository trtismodel
    python converter.py --model ./basemodel/ --out ./onnxmodel/model.onnx   (as in 2019)

The logic lives in ``atari_trtis_demo.convert.onnx_export``; this file is the command users know
(installed as ``atari-convert`` by ``pip install -e .``).
"""

from atari_trtis_demo.convert.convert_cli import main
from atari_trtis_demo.core.cli_args import run_cli

if __name__ == "__main__":
    run_cli(main)
