"""WeChat Official Account (公众号) server callbacks in safe mode (安全模式).

Inbound: `POST /webhooks/wechat?signature=&timestamp=&nonce=&openid=&encrypt_type=aes&msg_signature=`
with `<xml><ToUserName/><Encrypt/></xml>`; same WXBizMsgCrypt scheme as WeCom, the decrypted
message must carry our AppID. Reply: encrypted passive-reply XML in the response. The server URL
check (`GET ?signature=&timestamp=&nonce=&echostr=`) answers the echostr when
`signature = sha1(sorted(token, timestamp, nonce))`.
"""

from __future__ import annotations

from fastapi import Request, Response

from bot.channels.base import ChannelContext, bad_signature, check_timestamp, secret
from bot.channels.crypto import WXBizMsgCrypt, plain_signature, same
from bot.channels.wecom import WeixinChannel
from bot.settings import Settings


class WeChatChannel(WeixinChannel):
    name = "wechat"
    summary = "WeChat Official Account (公众号, safe mode): encrypted XML in, encrypted passive reply out."

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        settings = self.settings
        self.crypt = WXBizMsgCrypt(secret(settings.wechat_token), secret(settings.wechat_aes_key),
                                   settings.wechat_app_id or "")

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return bool(settings.wechat_token and settings.wechat_aes_key and settings.wechat_app_id)

    async def verify_url(self, request: Request) -> Response:
        query = request.query_params
        if "msg_signature" in query:  # the encrypted form of the check
            return await super().verify_url(request)
        signature, timestamp, nonce = query.get("signature"), query.get("timestamp"), query.get("nonce")
        echostr = query.get("echostr")
        if not (signature and timestamp and nonce and echostr):
            raise bad_signature("signature, timestamp, nonce and echostr are required")
        if not same(plain_signature(self.crypt.token, timestamp, nonce), signature):
            raise bad_signature()
        check_timestamp(timestamp, self.settings.webhook_max_age_seconds)
        return Response(echostr, media_type="text/plain")
