"""The Med-SORA MONAI Label app: serves the bundle of this repository (or any copy of it) from a local folder.

    monailabel start_server --app monailabel_app --studies /data/ct_studies \\
        --conf bundle bundle --conf label_convention totalseg_total --host 127.0.0.1 --port 8000

Conf (``--conf KEY VALUE``): ``bundle``, the bundle folder (default: the repository's ``bundle/``, beside this
app); ``label_convention``, the ids of the studies' label maps (btcv, totalseg_total, ...; a request's
``label_convention`` param overrides it); ``device`` (default cpu); ``feature_cache_dir``, where the organ
features of scans are cached on disk (default: memory only).

One model, ``medsora_symptom``: POST /infer/medsora_symptom?image=<id> with the form field
``params={"symptom": "dark urine and yellowing of the eyes"}`` returns the organ probability map (on the CT's
grid) and, in its JSON, the 7 organ probabilities ranked. The label map is the study's label (tag ``final``,
or the request's ``label_tag``) or an uploaded ``label`` field.
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from monailabel.config import settings
from monailabel.endpoints.infer import ResultType, run_inference
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.app import MONAILabelApp
from symptom_infer import SymptomInferTask

logger = logging.getLogger(__name__)

MODEL = "medsora_symptom"
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "bundle"


class MedSORAApp(MONAILabelApp):
    """MONAI Label app with one infer task, :class:`SymptomInferTask`, over the local bundle folder."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = conf or {}
        bundle = Path(conf.get("bundle", DEFAULT_BUNDLE))
        if not bundle.is_absolute():
            bundle = Path(app_dir).resolve().parent / bundle
        self.task = SymptomInferTask(
            bundle,
            label_convention=conf.get("label_convention"),
            device=conf.get("device", "cpu"),
            feature_cache_dir=conf.get("feature_cache_dir"),
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Med-SORA",
            description="Symptom-to-organ reasoning on abdominal CT (research use only)",
            version=self.task.version,
            labels=self.task.labels,
        )
        _answer_malformed_params_with_400()

    def init_infers(self) -> dict[str, Any]:
        return {MODEL: self.task}

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """MONAI Label's inference, with the study's organ label map found in the datastore when none was
        uploaded, and an unknown image answered with 404 rather than an empty path."""
        image_id = request.get("image", "")
        if isinstance(image_id, str) and image_id and not os.path.exists(image_id):
            store = datastore or self.datastore()
            if not store.get_image_uri(image_id):
                raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the studies folder")
            if not request.get("label"):
                tag = request.get("label_tag") or "final"
                if isinstance(tag, list):
                    tag = tag[0]
                label_id = store.get_labels_by_image_id(image_id).get(tag)
                request = {**request, "label": store.get_label_uri(label_id, tag) if label_id else None}
            request["image_id"] = image_id
        return super().infer(request, datastore)


def _answer_malformed_params_with_400() -> None:
    """MONAI Label 0.8.5 parses /infer's ``params`` form field itself and answers malformed JSON with a bare 500;
    put a route in front of its /infer route that answers 400 with the reason, and hands every well-formed
    request to MONAI Label's own ``run_inference``."""
    from monailabel.app import app

    path = "/infer/{model}"
    if any(getattr(route, "name", "") == "medsora_checked_infer" for route in app.router.routes):
        return

    async def checked_infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),  # the signature of MONAI Label's own /infer route, which FastAPI reads
        file: UploadFile = File(None),  # noqa: B008
        label: UploadFile = File(None),  # noqa: B008
        output: ResultType | None = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),  # noqa: B008
    ):
        try:
            parsed = json.loads(params) if params else {}
        except json.JSONDecodeError as error:
            raise HTTPException(status_code=400, detail=f"params is not valid JSON: {error}") from None
        if not isinstance(parsed, dict):
            raise HTTPException(status_code=400, detail=f"params must be a JSON object, got {type(parsed).__name__}")
        return run_inference(background_tasks, model, image, session_id, params, file, label, output)

    app.router.add_api_route(path, checked_infer, methods=["POST"], name="medsora_checked_infer")
    app.router.routes.insert(0, app.router.routes.pop())
