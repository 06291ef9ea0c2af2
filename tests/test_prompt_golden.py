"""Pinned behaviour of the soft-prompt methods (and SAPT's LoRA variant, which shares SAPT's code; AM-LoRA and
EWC, which switch the model to evaluation mode inside their hooks as the prompt methods do): a tiny 2-task
run of each gives, bit for bit, the trained tensors, method state and predictions recorded before the methods were
moved onto the shared ``PromptMethod`` base (issue 20). A refactor that changes what any of them computes (the order
of random draws, a mask, an eval-mode switch) changes a hash here.

Bit-identity holds for one torch build on one kind of CPU: the hashes were recorded with the torch version and CPU
capability in ``RECORDED_ON``; elsewhere the test is skipped with that reason. To re-record after a deliberate change
of behaviour: ``CONTINUAL_LM_RECORD_GOLDEN=1 python -m pytest tests/test_prompt_golden.py -s`` prints the new table.
"""
import hashlib
import json
import os

import pytest
import torch

from continual_lm.train.checkpoint import RunDir
from continual_lm import run

from helpers import skip_report_and_gc, tiny_config

TASKS = ["sentiment", "reverse"]  # a classification and a generation task
SAPT_TINY = {"prompt_length": 3, "query_hidden": 8, "pseudo_count": 2, "generator_steps": 2,
             "generator_max_tokens": 6, "generator_prompt_length": 4, "generator_batch_size": 2}
RUNS = {  # id -> (method, model, options of the method)
    "l2p": ("l2p", "tiny-random-llama", {"pool_size": 4, "top_k": 2, "prompt_length": 2}),
    "l2p-hidden": ("l2p", "tiny-random-llama", {"pool_size": 4, "top_k": 2, "prompt_length": 2, "query": "hidden"}),
    "l2p-hidden-t5": ("l2p", "tiny-random-t5", {"pool_size": 4, "top_k": 2, "prompt_length": 2, "query": "hidden"}),
    "progprompt": ("progprompt", "tiny-random-llama", {"prompt_length": 3}),
    "progprompt-mlp": ("progprompt", "tiny-random-llama", {"prompt_length": 3, "reparam": "mlp", "mlp_bottleneck": 8}),
    "lfpt5": ("lfpt5", "tiny-random-llama", {"prompt_length": 3, "pseudo_count": 2, "generator_max_tokens": 8}),
    "lfpt5-t5": ("lfpt5", "tiny-random-t5", {"prompt_length": 3, "pseudo_count": 2, "generator_max_tokens": 8}),
    "epi": ("epi", "tiny-random-llama", {"prompt_length": 3}),
    "epi-t5": ("epi", "tiny-random-t5", {"prompt_length": 3}),
    "sapt-prompt": ("sapt-prompt", "tiny-random-llama", SAPT_TINY),
    "sapt-prompt-replay": ("sapt-prompt", "tiny-random-llama", {**SAPT_TINY, "arm": "replay"}),
    "sapt-prompt-t5": ("sapt-prompt", "tiny-random-t5", SAPT_TINY),
    "sapt-lora": ("sapt-lora", "tiny-random-llama",
                  {k: v for k, v in SAPT_TINY.items() if k not in ("prompt_length", "generator_prompt_length")}),
    "single-prompt": ("single", "tiny-random-llama", {"pet": "prompt", "prompt_length": 3}),
    "mtl-prompt": ("mtl", "tiny-random-llama", {"pet": "prompt", "prompt_length": 3}),
    # their evaluation-mode switches moved to models.lm_forward.evaluating with the prompt methods' ones
    "amlora": ("amlora", "tiny-random-llama", {"attention_samples": 2}),
    "seqlora+ewc": ("seqlora+ewc", "tiny-random-llama", {}),
}
# timings, paths, versions; the stream's task definitions (written since the recording, not computed by a method)
RUN_FILES = ("results.json", "run.json", "state.json", "preset.json", "stream.json")
RECORDED_ON = {"torch": "2.13.0+cpu", "cpu": "AVX2"}
EXPECTED: dict[str, dict[str, str]] = {
    "l2p": {
        "weights": "e32f64f450d19ab5e6e0d32ea575fdf54c646b3a3466057caab0f8324770168f",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "dee36ace772e1ed71145ee73f01e32ff75f471341ab8aa67fb7efebb93796fe5",
        "predictions": "66e0d4eb615dc62f2442f22ddb9c9012b4fddaf31191e59c7c37a8f27233650a",
        "insight": "7cce83a72a95fa334fc9fe65233ea6fbbb581f57874c5ff933df1cc2c48a16eb",
        "generate": "6bea47ed34a8d666b828dfecd9314369c478fef4e22307e8ea88ddf6809aaa8d",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "l2p-hidden": {
        "weights": "7229e4360571e40811d9690b7c3d3fce791074d1b35ea985b0c61e4d892f75ea",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "dee36ace772e1ed71145ee73f01e32ff75f471341ab8aa67fb7efebb93796fe5",
        "predictions": "34a1e1e8af96f510a158348554b8e80e2e957a4776eeb52bf57da4e1df839fc2",
        "insight": "1f5a78fbc795145f2a96df024e0fc221cc5c7775bafd33c9c3a9b12bd274dc5b",
        "generate": "10b5a0c6c33332adf97a9b8a08ab64c01217021626b5147b62b25de3bce4d6af",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "l2p-hidden-t5": {
        "weights": "8d91e84df523728d49e29bea9a4c6da970ad8d5c30d5082d0187ee39ad78a9d5",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "dee36ace772e1ed71145ee73f01e32ff75f471341ab8aa67fb7efebb93796fe5",
        "predictions": "dcb572db22627f7515faf638afa187c193167b4e4d68d985251e992b6af301ea",
        "insight": "2cd8d2098430b5f4bf555cccff5b0d3a1aeedd2d18f9ba6c20ec198333d7dcd1",
        "generate": "0be1d3da202a9bb2c7d3ab54b20dc42dc4edc8c504c2296ca8e747527c65960f",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "progprompt": {
        "weights": "c33efa9e471299073644fb625afbbebcc89c18a28341755c4754708f1068b8d1",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "dee36ace772e1ed71145ee73f01e32ff75f471341ab8aa67fb7efebb93796fe5",
        "predictions": "1643a03ee787255a309734b7ea083ee194e805dd20208001bd1588c105ad91ae",
        "insight": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "generate": "6377d7f95bcf935b2d081858c4f87c35bfb0a1a9603ea5a66c5c08c1e69f696a",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "progprompt-mlp": {
        "weights": "cd91c8650c32dcdfdf1b95018e176bf75ef8b913af67496a80c776ecaf817ff4",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "dee36ace772e1ed71145ee73f01e32ff75f471341ab8aa67fb7efebb93796fe5",
        "predictions": "7ce6dde1acd363d6ea5fec6d9035d15ec8eac94c1184804935eaa4bb08eb202e",
        "insight": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "generate": "adef64797330b4d0dfae9f1d87b182d71085b35427c077e50f07dfbea4532c35",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "lfpt5": {
        "weights": "02691d31f29d69075816ff77fa5794513edadee2f9733fdb464dddb9ae6ffae1",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "e3f17b0e3f96bd9e32ebe8626608c95687951d4d38f19379dca3ae99e06945d5",
        "predictions": "3df510ec01f54bf6e97db1e2977d62f355dbcbbecdac7e0ae2927d4a7d2041cf",
        "insight": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "generate": "e3966011c69ddcee485ad8ac48eca97103c69cfbaf3a5fdffe28ea31d0a6f034",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "lfpt5-t5": {
        "weights": "d1c0ac8d287919fa8984a5b74e6d3590e5c58fc7ec228c3d6f90cb74ed139215",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "033d71adeff1e6438bea26d398fb8625a6d7536abcc708582c522e3b019d73c7",
        "predictions": "dcb572db22627f7515faf638afa187c193167b4e4d68d985251e992b6af301ea",
        "insight": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "generate": "27f74b1188e137b5c53e1fa69b7dd21196a169154f91e5306cc69ee9ad08c1f1",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "epi": {
        "weights": "4db9aa0af4551b79a9b44e44419f2c55ae5a9a895ddcb4272b4b5512bac6397f",
        "state": "17e723eed9fc5bffad2b713a041d075b034d11a48bae20a802bcc7e7cf607652",
        "meta": "c76b09ed09917814404d077d08da7551c9bc7cdc900a4bb28aa856d404aeecbc",
        "predictions": "8a82e5fd87c366c3dde78c3e460d60cae21e070a74b08733a878b6cfe0467aa0",
        "insight": "5b771ae14c5837bd0482bb8fbc850a9c989d08dc0d1eea4be935f34ff659f8c6",
        "generate": "f27439c6a9ec5e99a7b8bc1c5fa98a65452748b24d73fe2b5ada76d7c1458d02",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "epi-t5": {
        "weights": "9d89489ffe9647c24a3e2fbdb92e4a7b8b0b27193069b7815ba12edd5d05c265",
        "state": "6780bf105e9d07401162b6340b9712cbc1d9ebb432988963a7c2939e49230b59",
        "meta": "c76b09ed09917814404d077d08da7551c9bc7cdc900a4bb28aa856d404aeecbc",
        "predictions": "dcb572db22627f7515faf638afa187c193167b4e4d68d985251e992b6af301ea",
        "insight": "5b771ae14c5837bd0482bb8fbc850a9c989d08dc0d1eea4be935f34ff659f8c6",
        "generate": "6bf906a8b9ac46457b33d2cdd8ca1ad82565f40233557295769384d510d62633",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "sapt-prompt": {
        "weights": "0739c890ec6bf384e1b2eff5a03c1d1281562fbc6726d0e70beddcded09b7c52",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "8dd7df3c12d516d2e4e8351b855afff575c02e3054935bb9b2a81a4c0d9fc4bc",
        "predictions": "1643a03ee787255a309734b7ea083ee194e805dd20208001bd1588c105ad91ae",
        "insight": "4b39ce9f506f914611b618512e90ccdbe29fcff82b2f7dd4a00541c8e010b176",
        "generate": "eaf974d28c785377f9f0ef0c690ee68dd2f9e876ec2afa660711d724f181927d",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "sapt-prompt-replay": {
        "weights": "1ebd84e6638f67acf39fb84ab9972d30b48fb36182da5930113a69fea5a48883",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "69b1cbe6187be4f9a37b60dc08a8edcc0e6270674dc5172c295dd0cf259cee11",
        "predictions": "1643a03ee787255a309734b7ea083ee194e805dd20208001bd1588c105ad91ae",
        "insight": "f7523b6f456f08110bafd6566a8f567b354ab950f5bf7d77cde7662452bfbc72",
        "generate": "cd316d1f1d0e94531e29dd177e91742b3df2d47ea81c62c2a15a06b35ad5d603",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "sapt-prompt-t5": {
        "weights": "f48c84db3e8de856ad99e38a842ca3b447c83b33d25163bab0d504b267b33f7a",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "48ebc382eb2555ce294963c3289cfddb40a5b65429e6d9a1a883a7e98247ee09",
        "predictions": "dcb572db22627f7515faf638afa187c193167b4e4d68d985251e992b6af301ea",
        "insight": "42a4ecec654df5f0749451394fa1cb53e277c91e045974808e729014819b3ae5",
        "generate": "5c00b793f9687505b423a6bd414b8b6d436907f994ecdfbc3a2c5bbb93ba3562",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "sapt-lora": {
        "weights": "5ac2c77542a69d7f1d5b1e2cb07830f361c1814c850c9c7058aa8d51ba08723c",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "3651893a1e50c0f2d3f8b2e83000f0e5141bcb6fec8ad83e783de8c25307967f",
        "predictions": "abd99851c12b501c5617154668ee5496275e19724d154c2272a83441ae991af2",
        "insight": "c46efddc786d331d0f8778415fff9a4e36c6dae59ed9eed685a0d8737af73b93",
        "generate": "1b049acf786aa4a478b4eb482f7b0fef190cd89119f3ef690c70fad12be5aef6",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "single-prompt": {
        "weights": "b0c67ef5d895f4a244484d55057fe196b733350dfd859d7701f147a48aedc4ab",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "dee36ace772e1ed71145ee73f01e32ff75f471341ab8aa67fb7efebb93796fe5",
        "predictions": "a069bcbc7d0643471388a6a815333e9c67c159ba9378bf48e182b20081ee25c0",
        "insight": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "generate": "84cf2c8af75e6f0fa2d9baceb1a16a114d7f450d164fe67a5f110029a9a54c90",
        "matrix": "[[0.0, null], [null, 0.0]]",
    },
    "mtl-prompt": {
        "weights": "c614502470b7320500692170305095a808d396fc8d88b280a59946b26f8767cf",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "e10808d43975dc400731053386849f864f297e6c4f7519c380f3dbaf7067a840",
        "predictions": "c3ca49b03d78f9fac6326bb450023621ba8836419b3b1ca844644c6abc1fd3ae",
        "insight": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "generate": "7281744fddb849975e1e877b55545e56b9de53ec4718f4a079a39f1b29101120",
        "matrix": "[[null, null], [0.0, 0.0]]",
    },
    "amlora": {
        "weights": "c8e56c761ddf5ad4119b7db1967f39eee7a1d0a50b92645d91312edd2b063d2b",
        "state": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "meta": "dee36ace772e1ed71145ee73f01e32ff75f471341ab8aa67fb7efebb93796fe5",
        "predictions": "9060887be0308e53822f3008b24dba1cb16a595027fe5bafe428a78855aef930",
        "insight": "c50587d4da853422ac698435764dbd93df86164c9b58626af27cf4bd46972e92",
        "generate": "7bb553734776b3a6c891718e227331851f78b185aecfd3a6eb69a65b71facfd2",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
    "seqlora+ewc": {
        "weights": "5757a5dbe01766107a0422d596bebcbf09194335883a06e4f69c7958ff7763bc",
        "state": "0974d7d074d7c42c9cbd13acfec5d42e03ef6bef30b17b8769a2cedf3c28a198",
        "meta": "d8348ab568e1395c64e9ff5f7e726086a9ea46f392d82599a6e82831a1dcde89",
        "predictions": "8279d07b3462079795f56c7cd5ef11cbc9346ca2ccd0bfba4d71091706b032ff",
        "insight": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "generate": "42878a56c4e68f7c99c3632b5797ad185fcf3daa3dc0731140650a6be4eae9c8",
        "matrix": "[[0.0, null], [0.0, 0.0]]",
    },
}


def environment() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def sha256_of_tensors(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def sha256_of_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def record_generate_calls(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Every ``generate`` call's tensors in and out (evaluation and pseudo samples): the prompts each input got, which
    the tiny models' predictions alone barely show (they answer most inputs alike)."""
    from transformers.generation.utils import GenerationMixin

    calls, original = [], GenerationMixin.generate

    def recorded(model, *args, **kwargs):
        output = original(model, *args, **kwargs)
        calls.append({**{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}, "output": output})
        return output

    monkeypatch.setattr(GenerationMixin, "generate", recorded)
    return calls


# Records written since the recording, beside what the methods computed then: AM-LoRA's and SAPT's routing accuracy
# per task over the stream (issue 24), in their method state and attention files.
ADDED_SINCE = ("routing",)


def fingerprint(run_dir, results, calls) -> dict[str, str]:
    """sha256 of what each phase checkpointed (trainable tensors, method tensors, method metadata), of every
    prediction, of the method's own files (on_run_end: L2P's selection, EPI's task identification, SAPT's and
    AM-LoRA's attention) and of every generate call's tensors, and the accuracy matrix."""
    store = RunDir(run_dir)
    rows = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("phase_*"))
    weights, state, meta = zip(*(store.load_checkpoint(row) for row in rows))
    meta = [{k: v for k, v in m.items() if k not in ADDED_SINCE} for m in meta]
    predictions = {p.name: {task: [e["prediction"] for e in examples]  # the files hold inputs and scores too now
                            for task, examples in json.loads(p.read_text()).items()}
                   for p in sorted((run_dir / "predictions").glob("*.json"))}
    insight = {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in ADDED_SINCE}
               for p in sorted(run_dir.glob("*.json")) if p.name not in RUN_FILES}
    return {"weights": sha256_of_tensors({f"{r}.{n}": t for r, w in zip(rows, weights) for n, t in w.items()}),
            "state": sha256_of_tensors({f"{r}.{n}": t for r, s in zip(rows, state) for n, t in s.items()}),
            "meta": sha256_of_json(list(meta)), "predictions": sha256_of_json(predictions),
            "insight": sha256_of_json(insight),
            "generate": sha256_of_tensors({f"{k}.{n}": t for k, call in enumerate(calls) for n, t in call.items()}),
            "matrix": json.dumps(results["matrix"])}


def golden_run(tmp_path, monkeypatch, key: str) -> dict[str, str]:
    method, model, options = RUNS[key]
    skip_report_and_gc(monkeypatch)
    calls = record_generate_calls(monkeypatch)
    config = tiny_config(tmp_path, method=method, model=model, tasks=TASKS, max_train_per_task=4,
                         max_test_per_task=2, batch_size=2, eval_batch_size=2, max_input_length=32,
                         max_target_length=4, method_options={method.split("+")[-1]: options} if options else {},
                         group_by_length=False, threads=1)  # the recording's batches and its one CPU thread
    threads = torch.get_num_threads()  # float sums depend on how many threads split them
    try:
        return fingerprint(tmp_path / "run", run(config), calls)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("key", RUNS)
def test_prompt_method_runs_are_bit_identical_to_the_recorded_ones(key, tmp_path, monkeypatch):
    recording = os.environ.get("CONTINUAL_LM_RECORD_GOLDEN") == "1"
    if not recording and environment() != RECORDED_ON:
        pytest.skip(f"hashes recorded on {RECORDED_ON}, this is {environment()} (re-record: module docstring)")
    got = golden_run(tmp_path, monkeypatch, key)
    if recording:
        print(f"\nGOLDEN {json.dumps(environment())} {key!r}: {json.dumps(got)},")
        return
    assert got == EXPECTED[key]
