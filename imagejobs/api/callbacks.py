"""GET /callbacks/secret: the secret a client's callbacks are signed with, for its receiver to check them."""

from flask import Blueprint, jsonify

from imagejobs import callbacks as delivery
from imagejobs import params
from imagejobs.api.context import client, redis, settings

blueprint = Blueprint("callbacks", __name__)


@blueprint.get("/callbacks/secret")
@params.takes()
def callback_secret():
    name = client().name
    return jsonify(
        {
            "client": name,
            "secret": delivery.client_secret(redis(), settings(), name),
            "header": delivery.HEADER,
            "signature": "t=<unix time>,v1=<hex HMAC-SHA256 of '<t>.' + the body, under the secret>",
        }
    )
