"""Scene classification with few labels: train (1x), val (2x), test (3x), finetune (4x).

Example (fine-tune a SimCLR backbone on AID with 5 labels per class, linear probe):
    python main_cls.py --ds aid --ts 5 --mode 41 --hos 9 --netnum 020000 --expnum 20186093531_pretrain --cepoch 400
"""
from config.errors import exit_on_user_error, run_script
from engine import evaljob, finetune
from engine.cli import base_parser


@exit_on_user_error
def main(argv=None) -> None:
    parser = evaljob.add_args(base_parser(__doc__, script="cls"))
    finetune.run(argv, parser)


if __name__ == "__main__":
    run_script(main)
