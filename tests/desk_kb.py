"""A KB for the customer-service desk features (#24): the tiny KB plus related lists and two more FAQs."""

from __future__ import annotations

from tests.conftest import TINY_KB

DESK_KB = TINY_KB.replace(
    "    tags: [billing]\n",
    "    tags: [billing]\n    related: [member_points, shipping_time]  # 开票的人常接着问这两个\n",
).replace(
    "    tags: [membership]\n",
    "    tags: [membership]\n"
    "    related: [invoice, return_howto, shipping_time, change_password, exchange_howto, refund_time]\n",
).replace(
    "    tags: [shipping]\n",
    "    tags: [shipping]\n"
    "    channel_answers:  # the same answer, written for where it is read\n"
    "      web: 现货商品 48 小时内发货，可在[我的订单](https://shop.example.com/orders)查看物流。\n"
    "      dingtalk: \"**现货** 48 小时内发货。\"\n"
    "      wecom: 现货 48 小时内发货，可在企业微信工作台查看物流。\n",
) + """\
  - id: exchange_howto
    question: 怎么换货？
    paraphrases: [我想换个尺码, 换货流程是什么]
    answer: 在“我的订单”里点“申请售后”，选择换货。
  - id: refund_time
    question: 退款多久能到账？
    paraphrases: [退款什么时候到]
    answer: 原路退回，1-3 个工作日到账。
"""
