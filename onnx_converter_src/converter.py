"""Export a trained ChainerRL DQN to ONNX, as a file or into a Triton model repository.

    python onnx_converter_src/converter.py --model results/<run>/best --repository trtismodel
    python converter.py --model ./basemodel/ --out ./onnxmodel/model.onnx   (as in 2019)

The logic lives in ``atari_trtis_demo.onnx_export``; this file is the command users know.
"""

from atari_trtis_demo.convert_cli import main
from atari_trtis_demo.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
