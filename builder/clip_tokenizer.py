"""open_clip's BPE `SimpleTokenizer` as a Hugging Face `tokenizers` file.

The text cleaning (ftfy, HTML unescaping, whitespace, lower-casing) runs in the server as the
manifest's `clean` step; this tokenizer does the rest exactly as open_clip does: its regex
split, byte-level mapping, BPE with `</w>` word ends, and start/end tokens around at most
`context_length - 2` tokens. The build checks the ids against open_clip on varied texts.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, pre_tokenizers, processors
from tokenizers.models import BPE

# open_clip's pattern, compiled there with re.IGNORECASE.
SPLIT = r"""(?i)'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def convert_simple_tokenizer(simple) -> Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to an `open_clip.tokenizer.SimpleTokenizer`."""
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    tokenizer = Tokenizer(
        BPE(
            vocab=dict(simple.encoder),
            merges=list(merges),
            end_of_word_suffix="</w>",
            continuing_subword_prefix="",
            fuse_unk=False,
        )
    )
    special = [simple.decoder[i] for i in simple.all_special_ids]
    tokenizer.add_special_tokens(special)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    start, end = special[0], special[1]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}",
        special_tokens=[(start, simple.sot_token_id), (end, simple.eot_token_id)],
    )
    return tokenizer
