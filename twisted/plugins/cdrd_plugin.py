from twisted.application.service import ServiceMaker

cdrd = ServiceMaker(
    "cdrd", "cdrd.tap", "CDR server for VoIP gateways (GWP/1)", "cdrd"
)
