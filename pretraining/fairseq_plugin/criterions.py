"""fairseq criterion ``beit3_mdm``: sums the objectives a batch carries and logs each one.

Every objective is a mean over its predicted items, so ``sample_size`` is 1 per batch and fairseq's
gradient normalisation averages over accumulated batches (``--update-freq``) and ranks.
"""

from dataclasses import dataclass

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

__all__ = ["MaskedDataModelingCriterion", "OBJECTIVE_LOGS"]

OBJECTIVE_LOGS = ("mlm", "mim", "mvlm_text", "mvlm_image", "itc", "itm", "vlmo_mlm")


@dataclass
class MaskedDataModelingCriterionConfig(FairseqDataclass):
    pass


@register_criterion("beit3_mdm", dataclass=MaskedDataModelingCriterionConfig)
class MaskedDataModelingCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        loss, logs = model(**sample["net_input"])
        logging_output = {"loss": loss.detach(), "sample_size": 1, "nsentences": sample["nsentences"],
                          "ntokens": sample["ntokens"], **logs}
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = lambda key: sum(float(log.get(key, 0)) for log in logging_outputs)  # noqa: E731
        sample_size = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1), sample_size, round=4)
        for name in OBJECTIVE_LOGS:
            count = total(f"{name}_count")
            if count:
                metrics.log_scalar(f"{name}_loss", total(f"{name}_loss") / count, count, round=4)
                if any(f"{name}_correct" in log for log in logging_outputs):
                    metrics.log_scalar(f"{name}_acc", 100.0 * total(f"{name}_correct") / count, count, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
