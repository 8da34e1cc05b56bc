from django.urls import path

from billing import apis

urlpatterns = [
    path("topups", apis.TopUpOrdersApi.as_view(), name="topup-list"),
    path("topups/quote", apis.TopUpQuoteApi.as_view(), name="topup-quote"),
    path("topups/packages", apis.TopUpPackageListApi.as_view(), name="topup-packages"),
    path("topups/<str:order_no>", apis.TopUpOrderDetailApi.as_view(), name="topup-detail"),
    path("topups/<str:order_no>/cancel", apis.TopUpOrderCancelApi.as_view(), name="topup-cancel"),
    path(
        "topups/<str:order_no>/refunds",
        apis.TopUpRefundCreateApi.as_view(),
        name="topup-refund-create",
    ),
]
