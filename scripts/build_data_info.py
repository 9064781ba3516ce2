"""
Make train_data_info.pkl and to_sample_data_info.pkl for a flat image folder.

By default the evaluation list already in --out_dir (the paper's 2,000 ImageNet images,
shipped as data/sr_imagenet/to_sample_data_info.pkl) is kept, and every other image goes
to training. --resample yes draws a new evaluation set (num_per_class per synset, --seed).
A list that exists is replaced by a different one only with --overwrite True.

    python scripts/build_data_info.py --data_dir ../datasets/imagenet/train --out_dir data/sr_imagenet
"""

import os

from runkit import AT_LEAST_ONE, NON_NEGATIVE, UserError, create_argparser, logger, run_main
from runkit.fileio import read_text, save_pickle
from sr_var.data import IMAGE_EXTENSIONS, load_data_info
from sr_var.data_info import build_data_info

SHIPPED_EVAL_LIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "data", "sr_imagenet", "to_sample_data_info.pkl")


@run_main
def main():
    parser = create_argparser(dict(data_dir="", out_dir="data/sr_imagenet", num_per_class=2, seed=0,
                                   exclude_list="", resample=False, overwrite=False),
                              rules=dict(num_per_class=AT_LEAST_ONE, seed=NON_NEGATIVE), description=__doc__)
    args = parser.parse_args()
    eval_path = os.path.join(args.out_dir, "to_sample_data_info.pkl")
    exclude = []
    if args.exclude_list:
        lines = read_text(args.exclude_list, "exclude_list").splitlines()
        exclude = [line.strip().replace(".JPEG", "") for line in lines if line.strip()]
    eval_info = None
    if os.path.exists(eval_path) and not args.resample:
        eval_info = load_data_info(eval_path, "out_dir")
        logger.log(f"keeping the evaluation list {eval_path}")
    known = {s: v["y"] for s, v in load_data_info(SHIPPED_EVAL_LIST).items()} \
        if os.path.exists(SHIPPED_EVAL_LIST) else None
    train_info, eval_info = build_data_info(args.data_dir, args.num_per_class, args.seed, exclude,
                                            eval_info, known)
    if not train_info and not eval_info:
        raise UserError(f"--data_dir {args.data_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    outputs = {os.path.join(args.out_dir, "train_data_info.pkl"): train_info}
    if not os.path.exists(eval_path) or args.resample:
        outputs[eval_path] = eval_info
    for path, info in outputs.items():  # nothing that exists is replaced by something else
        if os.path.exists(path) and not args.overwrite and load_data_info(path, "out_dir") != info:
            raise UserError(f"{path!r} (--out_dir) already holds another list; pass --overwrite True to "
                            f"replace it, or choose another --out_dir")
    for path, info in outputs.items():
        save_pickle(info, path)
    count = lambda info: sum(len(v["file_names"]) for v in info.values())  # noqa: E731
    logger.log(f"{count(train_info)} training and {count(eval_info)} evaluation images "
               f"in {len(train_info)} classes -> {args.out_dir}")


if __name__ == "__main__":
    main()
