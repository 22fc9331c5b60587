"""The lexical half of retrieval: words (jieba segments Chinese), and BM25 over a tenant's passages.

all-MiniLM-L6-v2 knows English only, so for Chinese questions this index carries retrieval alone;
for English ones it catches exact names, numbers and product words the embedding blurs.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def wordlist(text: str) -> frozenset[str]:
    return frozenset(text.split())


WORD = re.compile(r"[a-z0-9]+(?:['.][a-z0-9]+)*|[\u3400-\u9fff\uf900-\ufaff]+")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
STOPWORDS = wordlist("""
a an the and or but if of to in on at by for with from as is are was were be been being am do does did
have has had i you he she it we they me my your our their its this that these those what which who whom
whose when where why how can could would should will shall may might must there here about into over
than then so not no yes please tell know want like get just also any some much many s t don doesn
的 了 吗 呢 吧 啊 是 在 有 和 与 或 我 你 您 他 她 它 我们 你们 他们 这 那 这个 那个 什么 怎么 怎样 如何 请问 请 一下
可以 能 会 要 想 都 也 就 还 吗 么 呀 哪 哪些 多少 几 个 对 给 把 被 让 从 到 为 为了 及 其 之 上 下 中
多久 多长 时间 几点 什么时候 哪里 哪儿 是否 有没有 能否 多少钱 怎么办 呢
""")
# Every word of a greeting, thanks or pleasantry: a turn made only of these (and stop words) has nothing to look
# up. "Hello, how are you doing this fine morning?" answered "I don't have that information" before the
# pleasantries were in. "help" is in (thanks for your help; can you help me?: nothing to look up either); a word
# that names a thing or a request ("talk", "open", "need", "refund") must stay out.
SMALL_TALK = wordlist("""
hello hi hey hiya howdy thanks thank thankyou cheers bye goodbye ok okay alright great good morning afternoon
evening night fine sorry nice lovely kind very really lot lots appreciate appreciated welcome doing going day
today well glad happy pleased meet meeting wonderful beautiful awesome perfect excellent brilliant cool sure
everyone sir madam weather later soon care take help how's what's it's that's i'm you're
你好 您好 谢谢 谢谢您 多谢 感谢 再见 好的 好 嗯 喂 早上好 上午好 下午好 晚上好 早安 晚安 拜拜 对不起 不好意思
没事 没关系 不客气 辛苦 辛苦了 太 太好了 不错 很 很好 非常 真 明白 知道 知道了 收到 行 哈哈 今天 天气 祝 愉快 开心
高兴 认识 今天天气
""")

log = logging.getLogger(__name__)
_jieba_ready = False


def _jieba() -> object:
    global _jieba_ready
    import jieba

    if not _jieba_ready:
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()  # builds its prefix dictionary once (~1 s), not inside the first question
        _jieba_ready = True
    return jieba


def prepare(background: bool = False) -> None:
    """Load jieba's dictionary now rather than inside the first Chinese question. `background`: in a thread,
    so a restarted worker serves again ~1.5 s sooner (jieba's own lock makes a question wait for it); not in a
    worker that forks, whose fork could copy the lock while the thread holds it."""
    if background:
        threading.Thread(target=_jieba, name="jieba-load", daemon=True).start()
    else:
        _jieba()


def words(text: str) -> list[str]:
    """Lower-case words and Chinese segments, stop words kept (small talk is told by them)."""
    out: list[str] = []
    for match in WORD.finditer(text.lower()):
        token = match.group(0)
        if CJK.match(token):
            out.extend(w for w in _jieba().lcut(token) if w.strip())  # type: ignore[attr-defined]
        else:
            out.append(token)
    return out


def terms(text: str) -> list[str]:
    """The words that count for matching: stop words out, plural 's' folded; Chinese also as character
    pairs, so 周末开门 meets 上午十点开门 even where jieba cuts the two differently."""
    found = []
    for w in words(text):
        if w in STOPWORDS:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss") and w.isascii():
            w = w[:-1]
        found.append(w)
    for match in WORD.finditer(text.lower()):
        if CJK.match(match.group(0)):
            for run in _content_runs(match.group(0)):
                found += [f"~{run[i:i + 2]}" for i in range(len(run) - 1)]
    return found


def _content_runs(cjk: str) -> list[str]:
    """The stretches of a Chinese run left when its stop words are cut out."""
    runs, current = [], ""
    for word in _jieba().lcut(cjk):  # type: ignore[attr-defined]
        if word in STOPWORDS:
            runs.append(current)
            current = ""
        else:
            current += word
    return [r for r in [*runs, current] if len(r) > 1]


def small_talk(text: str) -> bool:
    """A greeting or thanks with nothing to look up."""
    found = [w for w in words(text) if w not in STOPWORDS]
    return bool(words(text)) and all(w in SMALL_TALK for w in found)


@dataclass
class Scores:
    bm25: NDArray[np.float32]
    coverage: NDArray[np.float32]  # the share of the question's idf weight a passage contains (0..1)


class Bm25:
    """Okapi BM25 with postings per term, built from every passage's terms at once."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.n = len(documents)
        self.k1, self.b = k1, b
        lengths = np.array([len(d) for d in documents], dtype=np.float32)
        self.avgdl = float(lengths.mean()) if self.n else 0.0
        self.norm = (k1 * (1 - b + b * lengths / max(self.avgdl, 1e-9))).astype(np.float32)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, doc in enumerate(documents):
            for term, tf in Counter(doc).items():
                ids, tfs = postings.setdefault(term, ([], []))
                ids.append(i)
                tfs.append(tf)
        self.postings = {t: (np.array(ids, dtype=np.int32), np.array(tfs, dtype=np.float32))
                         for t, (ids, tfs) in postings.items()}

    def idf(self, term: str) -> float:
        df = len(self.postings[term][0]) if term in self.postings else 0
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def score(self, query: Sequence[str]) -> Scores:
        bm25 = np.zeros(self.n, dtype=np.float32)
        covered = np.zeros(self.n, dtype=np.float32)
        unique = list(dict.fromkeys(query))
        total = sum(self.idf(t) for t in unique)
        for term in unique:
            if term not in self.postings:
                continue
            ids, tfs = self.postings[term]
            idf = self.idf(term)
            bm25[ids] += idf * tfs * (self.k1 + 1) / (tfs + self.norm[ids])
            covered[ids] += idf
        return Scores(bm25, covered / total if total > 0 else covered)
