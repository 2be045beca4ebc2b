"""gRPC surface of the recommender; no business rules here (converters: recommend_converters)."""

from __future__ import annotations

import grpc

from quantledger.grpc_api.errors import maps_domain_errors
from quantledger.grpc_api.recommend_converters import query_from_proto, recommendation_to_proto
from quantledger.recommend.service import Recommender
from quantledger.v1 import recommend_service_pb2 as pb
from quantledger.v1 import recommend_service_pb2_grpc as pb_grpc


class RecommendServicer(pb_grpc.RecommendServiceServicer):
    def __init__(self, recommender: Recommender) -> None:
        self._recommender = recommender

    @maps_domain_errors
    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        return recommendation_to_proto(await self._recommender.answer(query_from_proto(request)))
