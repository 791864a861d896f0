"""Self-supervised pretraining of a remote-sensing backbone (mode 9xx; see --list-codes).

Example (SimCLR on the built-in demo data, 2-core CPU):
    python main_cls_ss_train.py --mode 910 --ds demo --netnum 000000 --mepoch 20 --bs 64 --aug 5 --aug_p S5
"""
from config.errors import exit_on_user_error, run_script
from engine import pretrain, pretrain_flags
from engine.cli import base_parser


@exit_on_user_error
def main(argv=None) -> None:
    parser = pretrain_flags.add_args(base_parser(__doc__, script="pretrain"))
    pretrain.run(argv, parser)


if __name__ == "__main__":
    run_script(main)
