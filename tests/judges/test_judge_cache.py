import threading

from dnpo.judges.base import Judge, JudgeResult
from dnpo.judges.cache import CachedJudge, JudgeCache, cache_key


class CountingJudge(Judge):
    """Scores len(response) % 101; responses containing 'fail' fail."""

    type = "counting"

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    @property
    def identity(self):
        return "counting:v1"

    def score(self, prompts, responses, gold_answers=None):
        with self.lock:
            self.calls.extend(responses)
        return [
            JudgeResult(None, "", "api: HTTP 500")
            if "fail" in r
            else JudgeResult(len(r) % 101, f"raw {r}")
            for r in responses
        ]


def test_key_depends_on_every_part():
    base = cache_key("j", "t", "p", "r", None)
    assert base == cache_key("j", "t", "p", "r", None)
    assert base != cache_key("j2", "t", "p", "r", None)
    assert base != cache_key("j", "t2", "p", "r", None)
    assert base != cache_key("j", "t", "p2", "r", None)
    assert base != cache_key("j", "t", "p", "r2", None)
    assert base != cache_key("j", "t", "p", "r", "42")


def test_cache_hits_and_failures_uncached(tmp_path):
    inner = CountingJudge()
    judge = CachedJudge(inner, JudgeCache(tmp_path / "cache.sqlite"), "t")
    first = judge.score(["q", "q", "q"], ["abc", "please fail", "héllo 🙂"])
    assert [r.score for r in first] == [3, None, 7]
    second = judge.score(["q", "q", "q"], ["abc", "please fail", "héllo 🙂"])
    assert inner.calls == ["abc", "please fail", "héllo 🙂", "please fail"]
    assert [r.cached for r in second] == [True, False, True]
    assert second[2].raw == "raw héllo 🙂"
    assert len(judge.cache) == 2
    judge.close()


def test_cache_persists_across_instances(tmp_path):
    path = tmp_path / "cache.sqlite"
    CachedJudge(CountingJudge(), JudgeCache(path), "t").score(["q"], ["abc"])
    inner = CountingJudge()
    [result] = CachedJudge(inner, JudgeCache(path), "t").score(["q"], ["abc"])
    assert result.cached
    assert inner.calls == []


def test_concurrent_threads_share_one_cache(tmp_path):
    judge = CachedJudge(CountingJudge(), JudgeCache(tmp_path / "cache.sqlite"), "t")
    errors = []

    def work(worker):
        try:
            for i in range(30):
                judge.score(["q"], [f"answer {i % 10} from {worker % 2}"])
        except Exception as error:  # collected for the assert below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(judge.cache) == 20
