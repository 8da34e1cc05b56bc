from django.urls import path

from redemption import apis

urlpatterns = [
    path("redemptions", apis.RedemptionsApi.as_view(), name="redemption-list"),
]
