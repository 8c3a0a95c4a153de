"""Caption tokenizer: a pure-Python stand-in for the COCO caption tool's PTBTokenizer step.

The COCO caption evaluation tool (``pycocoevalcap``) runs every caption through Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` and then drops the tokens in its ``PUNCTUATIONS`` list. BLEU,
ROUGE-L and CIDEr-D are computed on what is left, so scores are only comparable to published numbers when
the captions are tokenized the same way. :func:`tokenize` reproduces that pipeline with regular expressions:

* lower-case; newlines count as spaces; curly quotes, dashes and the ellipsis character are mapped to their
  ASCII forms first, as the Java lexer does (``—`` becomes ``--``, ``…`` becomes ``...``);
* punctuation is split off words: ``"a dog, running."`` -> ``a dog , running .``;
* clitics are split as in the Penn Treebank: ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``,
  ``man's`` -> ``man 's``, ``they'll`` -> ``they 'll``; ``cannot``/``gonna``/``wanna``/``gotta``/``lemme``/
  ``gimme`` are split in two (``can not``, ``gon na``, ...);
* a word keeps its inner hyphens, periods and slashes (``black-and-white``, ``3.5``, ``b/w``, ``1/2``), digit
  groups keep inner commas and colons (``10,000``, ``7:30``); acronyms (``u.s.``, ``e.g.``, ``p.m.``), the common
  abbreviations (``mr.``, ``dr.``, ``st.``, ``etc.``, months ...) and single letters (``a.``, unless a sentence
  starter such as ``The`` follows) keep their period, any other trailing period is split off;
* brackets become ``-lrb-``/``-rrb-``/``-lsb-``/``-rsb-``/``-lcb-``/``-rcb-``;
* the tokens in :data:`PUNCTUATIONS` are dropped, after lower-casing, exactly as the tool does. Because the tool
  compares lower-cased tokens with an upper-case list, ``-lrb-`` and friends are **not** dropped by the tool;
  neither are runs such as ``!!!`` or ``?!``. We keep them too, so scores match the tool's.

Where it can differ from the Java tokenizer (checked against the 3.4.1 jar; rare in captions):

* a caption that ends in a single letter with a period (``... holding a.``): PTB keeps ``a.`` unless the next
  word is a capitalised sentence starter such as ``The``, ``A``, ``He`` (then ``a`` and ``.``), and at the end
  of a caption the Java tool, which tokenizes a whole batch at once, looks at the *next caption of the
  batch*. We tokenize each caption on its own, as Java does a caption alone: ``a.`` is kept there. Inside a
  caption we follow PTB's rule;
* punctuation glued between letters without spaces (``a cat?a dog``, ``hello!world``): PTB keeps one token,
  we split;
* a clitic inside a hyphenated compound (``man's-best-friend``), ``y'all``, ``5'6"`` and other rare
  apostrophe uses; underscores at word edges; characters PTB cannot tokenize (it drops them with a warning,
  we keep them as one-character tokens);
* ``5 1/2``: PTB makes one token joined by a non-breaking space; the tool's BLEU and CIDEr scorers split it
  again on whitespace (its ROUGE-L does not). We return two tokens, ``5`` and ``1/2``;
* ``no.`` keeps its period only before a number (as PTB does); other context rules of the PTB lexer are not
  reproduced.
"""

from __future__ import annotations

import re

__all__ = ["PUNCTUATIONS", "tokenize"]

#: Tokens the COCO caption tool removes after tokenization (``pycocoevalcap.tokenizer.ptbtokenizer``).
#: The bracket names are upper case while the tokenizer output is lower case, so they never match.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Unicode forms the Java lexer normalises to PTB ASCII (quotes, dashes, ellipsis, currency, soft hyphen).
_NORMALISE = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
        "\u2013": " -- ", "\u2014": " -- ", "\u2015": " -- ",
        "\u2026": " ... ",
        "\u00a3": "#", "\u20ac": "$",
        "\u00ad": None,
        "\n": " ", "\r": " ",
    }
)

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}

# Abbreviations whose trailing period the PTB lexer keeps (checked against CoreNLP 3.4.1, lower-case input).
_ABBREVIATIONS = (
    "mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|corp|co|ltd|mt|prof|gen|rev|sen|rep|gov|lt|col|capt|sgt|ave|blvd|rd|ft|"
    "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|dept|est|cf|al"
)

_LETTER = r"[^\W\d_]"
_TOKEN = re.compile(
    "|".join(
        [
            # URLs, e-mail addresses and upper-case company names (AT&T) stay whole.
            r"(?P<url>(?:https?://|www\.)[^\s\"'()<>\[\]{}]*[^\s\"'()<>\[\]{}.,;:!?])",
            r"(?P<email>[\w.+-]+@\w[\w-]*(?:\.[\w-]+)+)",
            r"(?P<company>(?-i:[A-Z]+&[A-Z]+)(?!\w))",
            # Acronyms with periods (u.s., e.g., p.m.), a single letter with a period, listed abbreviations.
            rf"(?P<acronym>(?:{_LETTER}\.){{2,}}(?!\w))",
            rf"(?P<initial>{_LETTER}\.(?!\w))",
            rf"(?P<abbrev>(?:{_ABBREVIATIONS})\.(?!\w)|no\.(?=\s*\d))",
            # Emoticons keep their eyes: ':)' -> ':-rrb-'.
            r"(?P<emoticon>[:;]-?[()](?!\w))",
            # '.5' and "'90s" are single tokens.
            r"(?P<decimal>\.\d+(?!\w))",
            r"(?P<decade>'\d0s(?!\w))",
            # Hashtags and handles (#tag, @home); '#1' splits.
            rf"(?P<handle>[@#]{_LETTER}\w*)",
            # Words: inner hyphens, periods and slashes join; commas/colons only between digits;
            # an apostrophe only after a letter and before a letter (o'clock, man's, don't).
            rf"(?P<word>\w+(?:(?:[-./]|(?<=\d)[,:](?=\d)|(?<={_LETTER})')(?=\w)\w+)*)",
            # Clitics and quote-led words separated from their host by a space or a digit (90's, i 'm, 'em).
            r"(?P<clitic>'(?:s|re|ve|ll|d|m|em|n'|tis|twas)(?!\w))",
            r"(?P<ellipsis>\.{2,})",
            r"(?P<dashes>-{2,})",
            r"(?P<bangs>[!?]+)",
            r"(?P<quotes>``|''|\")",
            r"(?P<other>\S)",
        ]
    ),
    re.IGNORECASE,  # matching sees the original case (needed for single-letter initials); tokens are lowered
)
# PTB ends a sentence after an initial ('a.') only before one of these capitalised words (case-sensitive).
_SENTENCE_AFTER_INITIAL = re.compile(
    r"\s+(?:About|According|Additionally|After|An|A|As|At|But|Earlier|He|Her|Here|However|If|In|It|Last|Many|"
    r"More|Mr\.|Ms\.|Now|Once|One|Other|Our|She|Since|So|Some|Such|That|The|Then|There|These|They|This|We|"
    r"When|While|What|Yet|You)(?=\s|$)"
)

# Whole words the PTB lexer splits in two.
_SPLIT_WORDS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "gotta": ["got", "ta"],
    "wanna": ["wan", "na"],
    "lemme": ["lem", "me"],
    "gimme": ["gim", "me"],
}
_CLITIC_SUFFIX = re.compile(r"^(.*\w)(n't|'s|'re|'ve|'ll|'d|'m)$")


def _split_word(word: str) -> list[str]:
    """Split a joined word into PTB tokens (clitics and the fixed two-part words)."""
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    if "'n'" in word:  # rock'n'roll -> rock 'n' roll
        head, _, tail = word.partition("'n'")
        return [*_split_word(head), "'n'", *_split_word(tail)] if head and tail else [word]
    match = _CLITIC_SUFFIX.match(word)
    if match is not None:
        return [*_split_word(match.group(1)), match.group(2)]
    return [word]


def _ptb_tokens(text: str) -> list[str]:
    """Lower-cased PTB-style tokens of ``text``, punctuation still included."""
    text = text.translate(_NORMALISE)
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group().lower()
        if kind == "initial":
            # PTB reads 'a. The' as a sentence end and splits the period off; 'a. Dog' keeps 'a.'.
            ends_sentence = _SENTENCE_AFTER_INITIAL.match(text, match.end()) is not None
            tokens.extend([value[:-1], "."] if ends_sentence else [value])
        elif kind == "word":
            tokens.extend(_split_word(value))
        elif kind == "clitic":
            # 'tis / 'twas -> 't is / 't was, as PTB does.
            tokens.extend(["'t", value[2:]] if value in ("'tis", "'twas") else [value])
        elif kind == "emoticon":
            tokens.append(value[:-1] + _BRACKETS[value[-1]])
        elif kind == "ellipsis":
            tokens.append("...")
        elif kind == "dashes":
            tokens.append("--")
        elif kind == "quotes":
            tokens.append("''")
        elif kind == "other" and value in _BRACKETS:
            tokens.append(_BRACKETS[value])
        else:
            tokens.append(value)
    return tokens


def tokenize(text: str) -> list[str]:
    """Tokenize a caption the way the COCO caption evaluation tool does before scoring.

    Args:
        text: a raw caption, any case and punctuation.

    Returns:
        Lower-cased tokens with the tool's punctuation removed, e.g.
        ``tokenize("A man's dog doesn't like the cat.")`` ->
        ``["a", "man", "'s", "dog", "does", "n't", "like", "the", "cat"]``. Blank text gives ``[]``.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str caption, got {type(text).__name__}: {text!r:.80}")
    return [token for token in _ptb_tokens(text) if token not in PUNCTUATIONS]
