from django.urls import path

from usage import api

app_name = "usage"
urlpatterns = [
    path("authorizations", api.AuthorizationCreateApi.as_view(), name="authorization-create"),
    path(
        "authorizations/<int:authorization_id>",
        api.AuthorizationDetailApi.as_view(),
        name="authorization-detail",
    ),
    path(
        "authorizations/<int:authorization_id>/capture",
        api.AuthorizationCaptureApi.as_view(),
        name="authorization-capture",
    ),
    path(
        "authorizations/<int:authorization_id>/release",
        api.AuthorizationReleaseApi.as_view(),
        name="authorization-release",
    ),
    path("usage", api.UsageCollectionApi.as_view(), name="usage"),
    path("usage/export", api.UsageExportApi.as_view(), name="usage-export"),
    path("usage/<int:record_id>", api.UsageDetailApi.as_view(), name="usage-detail"),
    path("wallet", api.WalletApi.as_view(), name="wallet"),
    path("ledger", api.LedgerApi.as_view(), name="ledger"),
]
